//! The last good snapshot on disk (`--cache-dir`), so a node restarted while its control plane is
//! down serves its last table. Written atomically (temp file, fsync, rename); read back only when
//! the header, length and checksum all agree, so a torn or foreign file is refused, never trusted.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use prost::Message;
use sluice_shared::proto::v1 as pb;

const MAGIC: &str = "SLUICE-SNAPSHOT 1";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a valid snapshot cache: {why}")]
    Corrupt { path: PathBuf, why: String },
}

/// One snapshot file per node group under the cache directory.
#[derive(Debug, Clone)]
pub struct SnapshotCache {
    path: PathBuf,
}

impl SnapshotCache {
    pub fn new(dir: &Path, group: &str) -> SnapshotCache {
        // The group goes into the file name so a node moved to another group never boots the old
        // group's listeners.
        let safe: String =
            group.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
        SnapshotCache { path: dir.join(format!("snapshot-{safe}.bin")) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cached snapshot, `None` when there is none yet.
    pub fn load(&self) -> Result<Option<pb::Snapshot>, CacheError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CacheError::Io { path: self.path.clone(), source }),
        };
        decode(&bytes).map(Some).map_err(|why| CacheError::Corrupt { path: self.path.clone(), why })
    }

    /// Replaces the cached snapshot atomically. Blocking: call from `spawn_blocking`.
    pub fn store(&self, snapshot: &pb::Snapshot) -> io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir)?;
        let tmp = self.path.with_extension("bin.tmp");
        // A leftover from a crash would keep its own permissions.
        let _ = fs::remove_file(&tmp);
        {
            // The snapshot holds private keys (certificates, the sticky-cookie key): owner only.
            let mut open = fs::OpenOptions::new();
            open.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
            let mut f = open.open(&tmp)?;
            f.write_all(&encode(snapshot))?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        // The rename itself is durable only once the directory is synced.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

fn encode(snapshot: &pb::Snapshot) -> Vec<u8> {
    let payload = snapshot.encode_to_vec();
    let mut out = format!("{MAGIC} {} {:016x}\n", payload.len(), fnv1a(&payload)).into_bytes();
    out.extend_from_slice(&payload);
    out
}

fn decode(bytes: &[u8]) -> Result<pb::Snapshot, String> {
    let nl = bytes.iter().take(128).position(|&b| b == b'\n').ok_or("no header line")?;
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| "header is not text")?;
    let rest = header.strip_prefix(MAGIC).ok_or("unknown header")?;
    let mut fields = rest.split_whitespace();
    let len: usize = fields.next().and_then(|v| v.parse().ok()).ok_or("bad length")?;
    let sum = fields.next().and_then(|v| u64::from_str_radix(v, 16).ok()).ok_or("bad checksum field")?;
    let payload = &bytes[nl + 1..];
    if payload.len() != len {
        return Err(format!("length {} does not match header ({len})", payload.len()));
    }
    if fnv1a(payload) != sum {
        return Err("checksum mismatch".into());
    }
    pb::Snapshot::decode(payload).map_err(|e| format!("protobuf: {e}"))
}

/// FNV-1a, 64 bit: enough to catch torn writes and stray edits (this is not a security check).
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap() -> pb::Snapshot {
        pb::Snapshot {
            revision: 7,
            nonce: "n".into(),
            clusters: vec![pb::Cluster { name: "api".into(), ..Default::default() }],
            ..Default::default()
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_cache_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cache = SnapshotCache::new(dir.path(), "default");
        cache.store(&pb::Snapshot { revision: 3, ..Default::default() }).unwrap();
        let file = fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
        assert_eq!(fs::metadata(file).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SnapshotCache::new(dir.path(), "default");
        assert!(cache.load().unwrap().is_none());
        cache.store(&snap()).unwrap();
        assert_eq!(cache.load().unwrap(), Some(snap()));
        assert!(!cache.path().with_extension("bin.tmp").exists());

        let good = fs::read(cache.path()).unwrap();
        fs::write(cache.path(), &good[..good.len() - 1]).unwrap();
        assert!(matches!(cache.load(), Err(CacheError::Corrupt { .. })));
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        fs::write(cache.path(), &flipped).unwrap();
        assert!(matches!(cache.load(), Err(CacheError::Corrupt { .. })));
        fs::write(cache.path(), b"garbage").unwrap();
        assert!(matches!(cache.load(), Err(CacheError::Corrupt { .. })));
    }

    #[test]
    fn groups_do_not_share_a_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_ne!(SnapshotCache::new(dir.path(), "a").path(), SnapshotCache::new(dir.path(), "b").path());
    }
}
