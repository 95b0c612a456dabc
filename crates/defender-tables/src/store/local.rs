//! A local directory as the root. Publishing is a hard link from the temporary file (which
//! fails if the final name exists: a create-if-absent), then an fsync of the directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{Listed, LogFile, Store, Upload};
use crate::TablesError;

#[derive(Debug, Clone)]
pub(crate) struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn open(root: &Path) -> Result<Self, TablesError> {
        fs::create_dir_all(root).map_err(|e| TablesError::io("create", root, e))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

/// fsyncs a directory, so that an entry created or removed in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), TablesError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| TablesError::io("fsync directory", dir, e))
}

/// Creates `dir` and its missing parents, fsyncing each parent that gained an entry.
fn create_dirs(dir: &Path) -> Result<(), TablesError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(TablesError::io("create directory", dir, e)),
    }
    match dir.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

#[derive(Debug)]
struct LocalLog {
    path: PathBuf,
    file: File,
    /// Bytes known durable; a failed append is cut back to this.
    len: u64,
    /// Set when a failed append could not be cut back: nothing may follow a torn frame.
    broken: bool,
}

impl LogFile for LocalLog {
    fn append(&mut self, frame: &[u8]) -> Result<(), TablesError> {
        if self.broken {
            return Err(TablesError::Poisoned(format!(
                "staging log {} could not be repaired after a failed write",
                self.path.display()
            )));
        }
        match self.file.write_all(frame).and_then(|()| self.file.sync_data()) {
            Ok(()) => {
                self.len += frame.len() as u64;
                Ok(())
            }
            Err(e) => {
                // A partial frame would hide every later one from recovery: cut it off.
                if self
                    .file
                    .set_len(self.len)
                    .and_then(|()| self.file.sync_data())
                    .is_err()
                {
                    self.broken = true;
                }
                Err(TablesError::io("append to staging log", &self.path, e))
            }
        }
    }
}

#[derive(Debug)]
struct LocalUpload {
    tmp: PathBuf,
    target: PathBuf,
    file: BufWriter<File>,
}

impl Write for LocalUpload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Upload for LocalUpload {
    fn commit(self: Box<Self>) -> Result<bool, TablesError> {
        let LocalUpload { tmp, target, file } = *self;
        let file = file
            .into_inner()
            .map_err(|e| TablesError::io("write", &tmp, e.into_error()))?;
        file.sync_all().map_err(|e| TablesError::io("fsync", &tmp, e))?;
        drop(file);
        let dir = target.parent().expect("published files sit in a day directory");
        create_dirs(dir)?;
        let published = match fs::hard_link(&tmp, &target) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(TablesError::io("publish", &target, e)),
        };
        sync_dir(dir)?;
        fs::remove_file(&tmp).map_err(|e| TablesError::io("remove", &tmp, e))?;
        Ok(published)
    }
}

impl Store for LocalStore {
    fn create_log(&self, name: &str, header: &[u8]) -> Result<Box<dyn LogFile>, TablesError> {
        let path = self.path(name);
        let dir = path.parent().expect("logs sit in a directory");
        create_dirs(dir)?;
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| TablesError::io("create staging log", &path, e))?;
        file.write_all(header)
            .and_then(|()| file.sync_all())
            .map_err(|e| TablesError::io("write staging log", &path, e))?;
        sync_dir(dir)?;
        Ok(Box::new(LocalLog {
            path,
            file,
            len: header.len() as u64,
            broken: false,
        }))
    }

    fn create_file(&self, name: &str, tmp_key: &str) -> Result<Box<dyn Upload>, TablesError> {
        let tmp = self.path(tmp_key);
        create_dirs(tmp.parent().expect("temporary files sit in a directory"))?;
        let file = File::create(&tmp).map_err(|e| TablesError::io("create", &tmp, e))?;
        Ok(Box::new(LocalUpload {
            tmp,
            target: self.path(name),
            file: BufWriter::with_capacity(1 << 20, file),
        }))
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, TablesError> {
        let path = self.path(name);
        fs::read(&path).map_err(|e| TablesError::io("read", path, e))
    }

    fn exists(&self, name: &str) -> Result<bool, TablesError> {
        let path = self.path(name);
        path.try_exists().map_err(|e| TablesError::io("stat", path, e))
    }

    fn list(&self, prefix: &str) -> Result<Vec<Listed>, TablesError> {
        let mut out = Vec::new();
        let start = self.path(prefix);
        if start.is_dir() {
            walk(&self.root, &start, &mut out)?;
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<(), TablesError> {
        let path = self.path(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(TablesError::io("delete", path, e)),
        }
        let dir = path.parent().expect("files sit in a directory");
        sync_dir(dir)?;
        // Empty day and staging directories go too (best effort: a writer may be adding to one).
        if dir != self.root && fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none()) {
            let _ = fs::remove_dir(dir);
        }
        Ok(())
    }

    fn clear_temporary(&self, prefix: &str) -> Result<(), TablesError> {
        for f in self.list(prefix)? {
            self.delete(&f.name)?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<Listed>) -> Result<(), TablesError> {
    let entries = fs::read_dir(dir).map_err(|e| TablesError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| TablesError::io("list", dir, e))?;
        let path = entry.path();
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(TablesError::io("stat", path, e)),
        };
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            let name = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push(Listed {
                name,
                size: meta.len(),
                modified: meta.modified().unwrap_or(std::time::UNIX_EPOCH),
            });
        }
    }
    Ok(())
}
