//! Small helpers every layer uses: atomic file writes (temporary file, fsync, rename, directory
//! fsync), a directory lock for one writer at a time, sha256 of bytes and files, and human-readable
//! times. Nothing here knows about models, data sets or runs.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// `path` with `.tmp` appended: where atomic writers stage their data.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Writes `bytes` to `path` atomically: `<path>.tmp`, fsync, rename, directory fsync.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let result = (|| -> Result<()> {
        let mut f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes).and_then(|()| f.sync_all()).with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_parent_dir(path)
}

/// Fsyncs the directory holding `path`, so a rename into it survives a crash.
#[cfg(unix)]
pub fn sync_parent_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("cannot fsync directory {}", dir.display()))
}

#[cfg(not(unix))]
pub fn sync_parent_dir(_path: &Path) -> Result<()> {
    Ok(())
}

/// Creates `dir` and whichever of its parents are missing, like [`fs::create_dir_all`], and returns
/// the directories it created, deepest first, so that work that fails before it writes anything can
/// take them away again with [`remove_empty_dirs`].
pub fn create_dirs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d.to_path_buf());
        at = d.parent();
    }
    fs::create_dir_all(dir)?;
    Ok(missing)
}

/// Removes each of `dirs` (deepest first, as [`create_dirs`] returns them) that is empty; a
/// directory that holds anything stays, and so do its parents.
pub fn remove_empty_dirs(dirs: &[PathBuf]) {
    for d in dirs {
        if fs::remove_dir(d).is_err() {
            return;
        }
    }
}

/// `word` as one shell word: as it is when plain, else in single quotes, so that a command printed
/// for the user to run works as printed.
pub fn shell_word(word: &str) -> String {
    let plain = !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// [`shell_word`] of a path.
pub fn shell_path(path: &Path) -> String {
    shell_word(&path.to_string_lossy())
}

/// The lock file [`DirLock`] holds in a dataset or run directory. Hidden, so input listings skip it;
/// every place that lists such a directory looks only at its own names and ignores it.
pub const LOCK_FILE: &str = ".genesis.lock";

/// An advisory lock (`flock`) on `DIR/.genesis.lock`, so that two processes never write one dataset
/// or run directory at once. Held until dropped; the kernel releases it when the process dies, so a
/// lock left by a killed process never blocks. The lock file holds the holder's pid and command for
/// the message a second process gets; it is removed on release.
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
    /// `None` when the directory cannot hold a lock file (read-only) or its file system has no
    /// `flock`: then nobody can lock it and nothing is held.
    file: Option<File>,
}

impl DirLock {
    /// Locks `dir` (which must exist) for `what` (`"genesis prepare"`, `"genesis train"`), or fails at
    /// once naming the process that holds it.
    #[cfg(unix)]
    pub fn acquire(dir: &Path, what: &str) -> Result<DirLock> {
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::io::AsRawFd;
        let path = dir.join(LOCK_FILE);
        for _ in 0..1000 {
            let open = fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path);
            let mut file = match open {
                Ok(f) => f,
                Err(e) if matches!(e.kind(), io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem) => {
                    return Ok(DirLock { path, file: None });
                }
                Err(e) => return Err(e).with_context(|| format!("cannot create the lock file {}", path.display())),
            };
            // SAFETY: flock on a file descriptor this function owns; no memory is passed.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EWOULDBLOCK) => {
                        let mut holder = String::new();
                        let _ = file.read_to_string(&mut holder);
                        bail!(
                            "{} is in use by another {}; wait for it to finish or use another --out",
                            dir.display(),
                            describe_holder(&holder)
                        );
                    }
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOLCK | libc::EOPNOTSUPP) => return Ok(DirLock { path, file: None }),
                    _ => return Err(e).with_context(|| format!("cannot lock {}", path.display())),
                }
            }
            // A holder removes the file as it releases it: if that happened between our open and
            // our flock, we hold a lock on a file that is gone, so start again.
            let held = file.metadata().with_context(|| format!("cannot read {}", path.display()))?;
            match fs::metadata(&path) {
                Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {}
                _ => continue,
            }
            let me = format!("{} {what}\n", std::process::id());
            file.set_len(0)
                .and_then(|()| file.write_all(me.as_bytes()))
                .with_context(|| format!("cannot write the lock file {}", path.display()))?;
            return Ok(DirLock { path, file: Some(file) });
        }
        bail!("cannot lock {}: the lock file keeps being replaced", path.display())
    }

    #[cfg(not(unix))]
    pub fn acquire(dir: &Path, _what: &str) -> Result<DirLock> {
        Ok(DirLock { path: dir.join(LOCK_FILE), file: None })
    }
}

impl Drop for DirLock {
    /// Removes the lock file while still holding the lock (a process waiting on the old file sees it
    /// gone and starts again), then closes it, which releases the lock.
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// "genesis train (pid 1234)" from a lock file's "1234 genesis train".
fn describe_holder(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    match line.split_once(' ') {
        Some((pid, what)) if pid.parse::<u32>().is_ok() && !what.trim().is_empty() => {
            format!("{} (pid {pid})", what.trim())
        }
        _ => "genesis process".to_string(),
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lowercase hex sha256 of the file at `path`, streamed through a 1 MiB buffer.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot open {} to compute its sha256", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {} to compute its sha256", path.display())),
        }
    }
    Ok(hex(&hasher.finalize()))
}

/// The memory this machine can still give a process (`MemAvailable` of `/proc/meminfo`), in bytes;
/// `None` where it cannot be read.
pub fn available_memory() -> Option<u64> {
    let info = fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// `bytes` as `13.2 GB`.
pub fn gb(bytes: u128) -> String {
    format!("{:.1} GB", bytes as f64 / 1e9)
}

/// `1h02m`, `3m05s`, `12s`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The current UTC time as `2026-11-24 13:05:09 UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, (rem % 3600) / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(5.2), "5s");
        assert_eq!(duration(185.0), "3m05s");
        assert_eq!(duration(3720.0), "1h02m");
        assert_eq!(duration(3725.0), "1h02m");
        assert_eq!(duration(65.0), "1m05s");
    }

    #[test]
    fn a_locked_directory_refuses_a_second_lock_until_released() {
        let dir = std::env::temp_dir().join(format!("genesis-util-lock-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let first = DirLock::acquire(&dir, "genesis train").unwrap();
        let holder = fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert_eq!(holder, format!("{} genesis train\n", std::process::id()));
        // flock locks belong to the open file, so a second open in this process conflicts too.
        let e = format!("{:#}", DirLock::acquire(&dir, "genesis train").unwrap_err());
        let want = format!(
            "{} is in use by another genesis train (pid {}); wait for it to finish or use another --out",
            dir.display(),
            std::process::id()
        );
        assert_eq!(e, want);
        drop(first);
        assert!(!dir.join(LOCK_FILE).exists(), "the lock file is removed on release");
        let again = DirLock::acquire(&dir, "genesis prepare").unwrap();
        drop(again);
        assert_eq!(describe_holder(""), "genesis process");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn utc_now_is_well_formed() {
        let s = utc_now();
        assert_eq!(s.len(), 23, "{s}");
        assert!(s.starts_with("20") && s.ends_with(" UTC"), "{s}");
    }
}
