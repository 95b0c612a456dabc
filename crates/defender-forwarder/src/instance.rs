//! One forwarder per state directory, and the identity it keeps across restarts.
//!
//! - `instance.lock` is held (an OS file lock) for as long as the process runs, and names its pid:
//!   a second process on the same directory is refused at start with that pid. The lock goes
//!   with the process, however it ends, so a crashed instance never blocks its restart.
//! - `owner-id` is written on first start and read ever after: the owner id the sources claim
//!   ownership as. A restarted instance is the same owner, so it takes its own partitions and
//!   containers straight back instead of waiting for their expiry. Instances that share a Blob
//!   checkpoint store are told apart by their own state directories (or an explicit `owner_id`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use crate::deadletter::create_private_dir;

const LOCK: &str = "instance.lock";
const OWNER_ID: &str = "owner-id";

/// This process's hold on a state directory.
#[derive(Debug)]
pub struct Instance {
    dir: PathBuf,
    owner_id: String,
    _lock: File,
}

/// Why an instance cannot start on a directory.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Another live process holds it.
    #[error("{} is in use by another forwarder (pid {pid}); give each instance its own state_dir", dir.display())]
    InUse {
        /// The directory.
        dir: PathBuf,
        /// The other process, as it wrote itself down.
        pid: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> InstanceError + '_ {
    move |source| InstanceError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Instance {
    /// Takes `dir` (creating it, private) for this process, and reads or creates its identity.
    #[allow(clippy::incompatible_msrv)] // `File::try_lock` is std since 1.89.
    pub fn claim(dir: &Path) -> Result<Instance, InstanceError> {
        create_private_dir(dir).map_err(io_error(dir))?;
        let path = dir.join(LOCK);
        let mut lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_error(&path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = lock.read_to_string(&mut pid);
                return Err(InstanceError::InUse {
                    dir: dir.to_owned(),
                    pid: pid.trim().trim_start_matches("pid ").to_owned(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_error(&path)(e)),
        }
        lock.set_len(0).map_err(io_error(&path))?;
        lock.rewind().map_err(io_error(&path))?;
        writeln!(lock, "pid {}", std::process::id()).map_err(io_error(&path))?;
        let owner_id = owner_id(dir)?;
        Ok(Instance {
            dir: dir.to_owned(),
            owner_id,
            _lock: lock,
        })
    }

    /// The identity kept in the directory.
    pub fn owner_id(&self) -> &str {
        &self.owner_id
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Reads the identity, or creates it: `<host>-<8 hex>`, printable ASCII (it is stored as blob
/// metadata by the Blob checkpoint store).
fn owner_id(dir: &Path) -> Result<String, InstanceError> {
    let path = dir.join(OWNER_ID);
    match fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(&path)(e)),
    }
    let host: String = hostname()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(40)
        .collect();
    let host = if host.is_empty() { "defender".to_owned() } else { host };
    let id = format!("{host}-{:08x}", rand::random::<u32>());
    // Written whole or not at all: a crash here leaves no half identity.
    let tmp = dir.join(format!(".{OWNER_ID}.tmp"));
    let mut f = File::create(&tmp).map_err(io_error(&tmp))?;
    writeln!(f, "{id}").map_err(io_error(&tmp))?;
    f.sync_all().map_err(io_error(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_error(&path))?;
    tracing::info!(owner_id = %id, file = %path.display(), "created this instance's identity");
    Ok(id)
}

fn hostname() -> String {
    if let Ok(h) = std::env::var("HOSTNAME")
        && !h.trim().is_empty()
    {
        return h;
    }
    fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_per_directory_and_the_identity_survives() {
        let dir = tempfile::tempdir().unwrap();
        let first = Instance::claim(dir.path()).unwrap();
        let id = first.owner_id().to_owned();
        let second = Instance::claim(dir.path()).unwrap_err();
        let message = second.to_string();
        assert!(message.contains(&format!("pid {}", std::process::id())), "{message}");
        drop(first);
        let again = Instance::claim(dir.path()).unwrap();
        assert_eq!(again.owner_id(), id, "the identity is kept");
        assert!(id.is_ascii() && !id.chars().any(|c| c.is_ascii_control()));
    }
}
