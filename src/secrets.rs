//! The admin token: from configuration, or generated once into the data dir (mode 0600) and
//! printed a single time, on the start that created it.

use std::io::Write;

use anyhow::Context;

use crate::config::Config;

pub const ADMIN_TOKEN_FILE: &str = "admin_token";

pub fn admin_token(config: &Config) -> anyhow::Result<String> {
    if let Some(t) = &config.admin_token {
        return Ok(t.clone());
    }
    let path = config.data_dir.join(ADMIN_TOKEN_FILE);
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
