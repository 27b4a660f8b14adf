//! Where a shop's webhooks may send requests: public addresses only, unless the operator allows a
//! range (`events.webhooks.allowed_ranges`). A shop key must not make vitrina call into its own
//! network (loopback, private, link-local such as cloud metadata at 169.254.169.254, unique-local).
//! Checked when a subscription is made (an address literal, or a name that resolves there) and
//! again at every delivery, by the client's resolver, since a name may resolve elsewhere later.
//! Redirects are never followed (`sinks::webhook::client`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// The ranges an operator allowed, parsed once.
#[derive(Debug, Clone, Default)]
pub struct Allowed(Arc<Vec<IpNet>>);

impl Allowed {
    pub fn parse(ranges: &[String]) -> anyhow::Result<Allowed> {
        let nets = ranges
            .iter()
            .map(|r| r.parse::<IpNet>().map_err(|e| anyhow::anyhow!("events.webhooks.allowed_ranges: {r:?}: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Allowed(Arc::new(nets)))
    }

    /// Whether a request may go to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        is_public(ip) || self.0.iter().any(|n| n.contains(&ip))
    }
}

/// An IPv4 address carried in IPv6 (`::ffff:a.b.c.d`) is judged as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => public_v6(v6),
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (carrier NAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
        || (first == 0x0064 && ip.segments()[1] == 0xff9b)) // NAT64: an IPv4 address inside, unseen
}

/// Why `url` may not be a webhook target, if it may not: checked at subscription. A name that
/// does not resolve now is accepted (the resolver checks it at each delivery).
pub async fn refusal(url: &str, allowed: &Allowed) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let port = parsed.port_or_known_default().unwrap_or(443);
    let host = parsed.host_str()?;
    let addrs: Vec<IpAddr> = match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        Ok(literal) => vec![literal],
        Err(_) => match tokio::net::lookup_host((host, port)).await {
            Ok(found) => found.map(|a| a.ip()).collect(),
            Err(_) => return None,
        },
    };
    addrs.into_iter().find(|ip| !allowed.permits(*ip)).map(|ip| {
        format!("{} is a loopback, private, link-local or otherwise non-public address; webhooks go to public endpoints", ip)
    })
}

/// The webhook client's resolver: a name resolves only to the addresses a request may go to.
pub struct GuardedResolver(pub Allowed);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allowed = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let permitted: Vec<SocketAddr> = found.iter().copied().filter(|a| allowed.permits(a.ip())).collect();
            if permitted.is_empty() {
                let err: Box<dyn std::error::Error + Send + Sync> =
                    format!("{host} resolves only to non-public addresses ({found:?}); not allowed as a webhook target").into();
                return Err(err);
            }
            Ok(Box::new(permitted.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_unless_allowed() {
        let none = Allowed::default();
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(!none.permits(ip.parse().unwrap()), "{ip} is refused");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"] {
            assert!(none.permits(ip.parse().unwrap()), "{ip} is public");
        }
        let loopback = Allowed::parse(&["127.0.0.0/8".into(), "::1/128".into()]).unwrap();
        assert!(loopback.permits("127.0.0.1".parse().unwrap()) && loopback.permits("::1".parse().unwrap()));
        assert!(!loopback.permits("10.0.0.1".parse().unwrap()));
        assert!(Allowed::parse(&["not a range".into()]).is_err());
    }

    #[tokio::test]
    async fn names_are_judged_by_what_they_resolve_to() {
        let none = Allowed::default();
        assert!(refusal("http://localhost:9/hook", &none).await.is_some());
        assert!(refusal("http://[::1]:9/hook", &none).await.is_some());
        assert!(refusal("http://169.254.169.254/latest/meta-data", &none).await.is_some());
        // A name that does not resolve now is left to the resolver at delivery.
        assert!(refusal("https://no-such-host.invalid/hook", &none).await.is_none());
        let resolver = GuardedResolver(none);
        let r = reqwest::dns::Resolve::resolve(&resolver, "localhost".parse().unwrap()).await;
        assert!(r.is_err(), "the delivery resolver refuses a name that resolves to loopback");
    }
}
