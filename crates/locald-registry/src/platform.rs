//! Which entry of an image index this host runs: `linux/amd64`, `linux/arm64` (variant `v8` or
//! none), `linux/arm/v7`…

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// This machine, in the OCI spelling of GOARCH.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform { os: "linux".into(), architecture: architecture.into(), variant: variant.map(Into::into) }
    }

    fn variant_matches(&self, entry: Option<&str>) -> bool {
        match (self.variant.as_deref(), entry) {
            (_, None) | (None, _) => true,
            (Some(a), Some(b)) => a == b,
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

fn entry_platform(entry: &Value) -> Option<(String, String, Option<String>)> {
    let p = entry.get("platform")?;
    Some((
        p.get("os")?.as_str()?.to_owned(),
        p.get("architecture")?.as_str()?.to_owned(),
        p.get("variant").and_then(Value::as_str).map(str::to_owned),
    ))
}

/// The digest of `index`'s manifest for `platform`: an exact variant first, then one that
/// names none. `Err` lists what the index offers.
pub fn choose(index: &Value, platform: &Platform) -> Result<String, String> {
    let entries = index.get("manifests").and_then(Value::as_array).cloned().unwrap_or_default();
    let candidates: Vec<(&Value, Option<String>)> = entries
        .iter()
        .filter_map(|e| {
            let (os, arch, variant) = entry_platform(e)?;
            (os == platform.os
                && arch == platform.architecture
                && platform.variant_matches(variant.as_deref()))
            .then_some((e, variant))
        })
        .collect();
    let best =
        candidates.iter().find(|(_, v)| v.is_some() && *v == platform.variant).or_else(|| candidates.first());
    if let Some((entry, _)) = best {
        if let Some(digest) = entry.get("digest").and_then(Value::as_str) {
            return Ok(digest.to_owned());
        }
    }
    let available: Vec<String> = entries
        .iter()
        .filter_map(entry_platform)
        .filter(|(os, arch, _)| os != "unknown" && arch != "unknown")
        .map(|(os, arch, variant)| match variant {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        })
        .collect();
    Err(if available.is_empty() { "none".into() } else { available.join(", ") })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> Value {
        serde_json::json!({"manifests": [
            {"digest": "sha256:arm7", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
            {"digest": "sha256:att", "platform": {"os": "unknown", "architecture": "unknown"}},
            {"digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": "sha256:arm64", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        ]})
    }

    fn platform(arch: &str, variant: Option<&str>) -> Platform {
        Platform { os: "linux".into(), architecture: arch.into(), variant: variant.map(Into::into) }
    }

    #[test]
    fn the_hosts_architecture_and_variant_are_chosen() {
        assert_eq!(choose(&index(), &platform("amd64", None)).unwrap(), "sha256:amd");
        assert_eq!(choose(&index(), &platform("arm64", Some("v8"))).unwrap(), "sha256:arm64");
        assert_eq!(choose(&index(), &platform("arm", Some("v7"))).unwrap(), "sha256:arm7");
        let e = choose(&index(), &platform("arm", Some("v6"))).unwrap_err();
        assert_eq!(e, "linux/arm/v7, linux/amd64, linux/arm64/v8");
    }
}
