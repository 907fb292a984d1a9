//! OCI image archives made from files on this machine, for the one-node test cluster:
//! no registry and no Docker engine here, so an image is one uncompressed layer, its
//! config and a manifest in an OCI image layout, packed with `tar` and imported into
//! containerd (`ctr images import`). The layout is the OCI image spec's
//! (<https://github.com/opencontainers/image-spec/blob/main/image-layout.md>); the
//! `io.containerd.image.name` annotation of the index names the image on import.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// What the image runs, as a Dockerfile's final stage says it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `UID:GID`, or empty for root.
    pub user: String,
    pub exposed_ports: Vec<String>,
    pub env: Vec<String>,
}

/// One file of the image: taken from `source`, placed at `dest` (absolute).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    pub source: PathBuf,
    pub dest: String,
    pub mode: u32,
}

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn tar(args: &[&std::ffi::OsStr]) -> std::io::Result<()> {
    let out = Command::new("tar").args(args).output()?;
    if !out.status.success() {
        return Err(io(format!("tar {args:?}: {}", String::from_utf8_lossy(&out.stderr))));
    }
    Ok(())
}

/// Writes an OCI archive of `files` named `name` (`localhost/x:tag`) to `archive`.
pub fn build(archive: &Path, name: &str, files: &[ImageFile], config: &ImageConfig) -> std::io::Result<()> {
    let work = archive.with_extension("work");
    let _ = std::fs::remove_dir_all(&work);
    let (root, layout) = (work.join("root"), work.join("layout"));
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    for f in files {
        let rel = f.dest.trim_start_matches('/');
        let to = root.join(rel);
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::copy(&f.source, &to).map_err(|e| io(format!("{}: {e}", f.source.display())))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(f.mode))?;
    }
    // Owned by root, fixed times and order: the same files give the same layer digest.
    let layer_tar = work.join("layer.tar");
    tar(&[
        "--sort=name".as_ref(),
        "--owner=0".as_ref(),
        "--group=0".as_ref(),
        "--numeric-owner".as_ref(),
        "--mtime=@0".as_ref(),
        "-C".as_ref(),
        root.as_os_str(),
        "-cf".as_ref(),
        layer_tar.as_os_str(),
        ".".as_ref(),
    ])?;
    let layer = std::fs::read(&layer_tar)?;
    let layer_digest = sha256_hex(&layer);
    std::fs::write(blobs.join(&layer_digest), &layer)?;
    let ports: serde_json::Map<String, serde_json::Value> = config
        .exposed_ports
        .iter()
        .map(|p| (p.clone(), serde_json::json!({})))
        .collect();
    let image_config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": config.entrypoint,
            "Cmd": config.cmd,
            "User": config.user,
            "Env": config.env,
            "ExposedPorts": ports,
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
    });
    let config_bytes = serde_json::to_vec(&image_config)?;
    let config_digest = sha256_hex(&config_bytes);
    std::fs::write(blobs.join(&config_digest), &config_bytes)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": config_bytes.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{layer_digest}"),
            "size": layer.len(),
        }],
    });
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let manifest_digest = sha256_hex(&manifest_bytes);
    std::fs::write(blobs.join(&manifest_digest), &manifest_bytes)?;
    let tag = name.rsplit_once(':').map_or("latest", |(_, t)| t);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest_bytes.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    tar(&[
        "-C".as_ref(),
        layout.as_os_str(),
        "-cf".as_ref(),
        archive.as_os_str(),
        ".".as_ref(),
    ])?;
    std::fs::remove_dir_all(&work)
}

/// The shared libraries `binary` loads (from `ldd`), as image files at the same paths:
/// a binary that is not static needs them in an image without a base.
pub fn shared_libraries(binary: &Path) -> std::io::Result<Vec<ImageFile>> {
    let out = Command::new("ldd").arg(binary).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next().filter(|p| p.starts_with('/')),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            files.push(ImageFile {
                source: std::fs::canonicalize(p)?,
                dest: p.to_owned(),
                mode: 0o755,
            });
        }
    }
    Ok(files)
}

/// The final stage of a Dockerfile: what it copies (source paths as written) and runs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FinalStage {
    pub base: String,
    /// (source in the build stage, destination in the image)
    pub copies: Vec<(String, String)>,
    pub config: ImageConfig,
}

/// Reads the last `FROM` stage of a Dockerfile: `COPY --from=…`, `USER`, `EXPOSE`,
/// `ENV`, and exec-form `ENTRYPOINT`/`CMD` (the only forms the project's Dockerfile uses;
/// others are an error rather than silently ignored).
pub fn final_stage(dockerfile: &str) -> Result<FinalStage, String> {
    // An instruction continues on the next line after a trailing backslash.
    let joined = dockerfile.replace("\\\n", " ");
    let mut stage = None;
    for raw in joined.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (op, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        let op = op.to_ascii_uppercase();
        if op == "FROM" {
            stage = Some(FinalStage {
                base: rest.split_whitespace().next().unwrap_or_default().to_owned(),
                ..FinalStage::default()
            });
            continue;
        }
        let Some(s) = stage.as_mut() else { continue };
        let exec = |v: &str| serde_json::from_str::<Vec<String>>(v).map_err(|e| format!("{op} {v}: {e}"));
        match op.as_str() {
            "COPY" => {
                let words: Vec<&str> = rest.split_whitespace().filter(|w| !w.starts_with("--")).collect();
                if let [from, to] = words.as_slice() {
                    s.copies.push(((*from).to_owned(), (*to).to_owned()));
                } else {
                    return Err(format!("COPY with other than one source: {line}"));
                }
            }
            "USER" => s.config.user = rest.to_owned(),
            "EXPOSE" => s.config.exposed_ports.extend(rest.split_whitespace().map(|p| {
                if p.contains('/') {
                    p.to_owned()
                } else {
                    format!("{p}/tcp")
                }
            })),
            "ENV" => s.config.env.push(rest.replacen(' ', "=", 1)),
            "ENTRYPOINT" => s.config.entrypoint = exec(rest)?,
            "CMD" => s.config.cmd = exec(rest)?,
            "RUN" | "WORKDIR" => {}
            other => {
                return Err(format!(
                    "Dockerfile instruction {other} in the final stage is not understood"
                ));
            }
        }
    }
    stage.ok_or_else(|| "no FROM in the Dockerfile".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_stage_is_read_from_a_multi_stage_dockerfile() {
        let d = "FROM rust AS build\nRUN cargo build \\\n && strip x\nCOPY . .\n\nFROM scratch\n\
                 COPY --from=build /src/x /x\nUSER 1:2\nEXPOSE 8080\nENTRYPOINT [\"/x\"]\nCMD [\"run\"]\n";
        let s = final_stage(d).expect("parsed");
        assert_eq!(s.base, "scratch");
        assert_eq!(s.copies, vec![("/src/x".to_owned(), "/x".to_owned())]);
        assert_eq!(s.config.user, "1:2");
        assert_eq!(s.config.exposed_ports, vec!["8080/tcp"]);
        assert_eq!(
            (s.config.entrypoint, s.config.cmd),
            (vec!["/x".into()], vec!["run".into()])
        );
        assert!(final_stage("FROM scratch\nVOLUME /data\n").is_err());
    }
}
