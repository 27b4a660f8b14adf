//! The admin token: from configuration, or generated once into the data dir (mode 0600) and
//! printed a single time, on the start that created it.

use std::io::Write;

use anyhow::Context;

pub const ADMIN_TOKEN_FILE: &str = "admin_token";

/// The configured token, else the one generated earlier into `data_dir`, else a new one.
pub fn admin_token(configured: Option<&str>, data_dir: &std::path::Path) -> anyhow::Result<String> {
    if let Some(t) = configured {
        return Ok(t.to_owned());
    }
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let t = existing.trim().to_owned();
        if t.len() >= 16 {
            return Ok(t);
        }
    }
    let token = crate::shops::generate_api_key().replacen("vk_", "va_", 1);
    write_private(&path, &token).with_context(|| format!("writing {}", path.display()))?;
    // Printed once, to the terminal, deliberately not through the log pipeline.
    println!("Generated admin token (stored in {}): {token}", path.display());
    Ok(token)
}

/// Writes a secret readable by the owner only.
pub fn write_private(path: &std::path::Path, content: &str) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(content.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

/// A URL fit to print: the password of `scheme://user:password@host` (or a `password=` setting)
/// replaced by `***`.
pub fn mask_url_password(url: &str) -> String {
    if let Some(start) = url.find("://").map(|i| i + 3) {
        let authority_end = url[start..].find(['/', '?']).map_or(url.len(), |i| start + i);
        if let Some(at) = url[start..authority_end].rfind('@').map(|i| start + i) {
            if let Some(colon) = url[start..at].find(':').map(|i| start + i) {
                return format!("{}***{}", &url[..=colon], &url[at..]);
            }
        }
        return url.to_owned();
    }
    url.split(' ')
        .map(|part| if part.starts_with("password=") { "password=***".to_owned() } else { part.to_owned() })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn masks_passwords_in_urls() {
        use super::mask_url_password as m;
        assert_eq!(m("amqp://guest:secret@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(m("postgres://postgres@127.0.0.1/db"), "postgres://postgres@127.0.0.1/db");
        assert_eq!(m("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(m("host=a user=b password=c"), "host=a user=b password=***");
    }
}
