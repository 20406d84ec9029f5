//! Atomic output: write to a temporary file beside the target, sync, then rename, so a
//! reader never sees a half-written file and an interrupted run leaves the old one intact.
//! [`create_new_atomic`] creates a file only where none exists, whole, among concurrent
//! processes and hosts (the primitive under the sweep's point claims).

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically, creating missing parent directories.
///
/// # Errors
/// [`Error::Io`] naming `path` (or its directory) when any step fails.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = written_beside(path, bytes)?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// A temporary file in `path`'s directory (created if missing) holding `bytes`, synced, with
/// the usual output permissions.
fn written_beside(path: &Path, bytes: &[u8]) -> Result<tempfile::NamedTempFile> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".seli-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(path, e))?;
    // Temporary files are created private (0600); outputs get the usual 0644.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| Error::io(path, e))?;
    }
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    Ok(tmp)
}

/// Serializes `value` as pretty JSON (with a trailing newline) and writes it atomically.
pub fn write_json_atomic<T: serde::Serialize>(
    path: &Path,
    what: &'static str,
    value: &T,
) -> Result<()> {
    let mut bytes =
        serde_json::to_vec_pretty(value).map_err(|cause| Error::Serialize { what, cause })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Creates `path` holding `bytes` only if no file of that name exists: `Ok(true)` when this
/// call created it, `Ok(false)` when it was already there. The file appears whole (a reader
/// never sees it partly written) and, among processes racing on one name, exactly one gets
/// `true`, on local filesystems and on NFS alike.
///
/// The bytes go to a uniquely named temporary file in the same directory, which is then
/// hard-linked to `path`: `link(2)` fails when the name exists and is atomic on the server
/// under NFS. Whether the link was made is judged by the temporary file's link count (2 when
/// it was), not by the call's answer, because over NFS a retransmitted link request can
/// report "exists" for a link it made (the method `open(2)` documents for lock files on NFS).
/// The temporary file is then removed. Needs a filesystem with hard links (local
/// filesystems, NFS, Lustre, CephFS do; some FUSE and SMB mounts do not, and say so here).
///
/// # Errors
/// [`Error::Io`] naming `path` (or its directory) when the directory cannot be created or
/// the temporary file written, or when the link fails for another reason than an existing
/// name (hard links not supported, permissions).
pub fn create_new_atomic(path: &Path, bytes: &[u8]) -> Result<bool> {
    let tmp = written_beside(path, bytes)?;
    let linked = std::fs::hard_link(tmp.path(), path);
    let made = link_count(tmp.path()).map_err(|e| Error::io(path, e))? >= 2;
    // Dropping `tmp` removes the temporary name; `path` keeps the file when the link was made.
    drop(tmp);
    match linked {
        _ if made => Ok(true),
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

#[cfg(unix)]
fn link_count(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.nlink())
}

#[cfg(not(unix))]
fn link_count(_: &Path) -> std::io::Result<u64> {
    // Without link counts, the link call's own answer decides.
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_file_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/out.json");
        write_atomic(&path, b"first version, longer").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub")).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn json_numbers_read_back_bit_for_bit() {
        // serde_json's default parser can land an ulp away from the written number (these two
        // did: values of a training summary); the workspace turns on `float_roundtrip`.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("numbers.json");
        let mut values = vec![0.11409110607722472, 2.2216683015587026e-13, 0.1 + 0.2, 1e-300];
        let mut x = 0.123_456_789_f64;
        for _ in 0..2000 {
            x = (x * 3.987_654_321).fract() * 10f64.powi((x * 600.0) as i32 - 300);
            values.push(x);
            x = x.abs().log10().fract().abs() + 1e-3;
        }
        write_json_atomic(&path, "numbers", &values).unwrap();
        let back: Vec<f64> = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for (a, b) in values.iter().zip(&back) {
            assert_eq!(a.to_bits(), b.to_bits(), "{a:e} read back as {b:e}");
        }
    }

    #[test]
    fn create_new_makes_one_file_and_never_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("claims/a.json");
        assert!(create_new_atomic(&path, b"first").unwrap());
        assert!(!create_new_atomic(&path, b"second").unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("claims")).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary left");
        // Racing threads: exactly one creates it.
        let race = dir.path().join("race");
        let won: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|i| {
                    let race = &race;
                    s.spawn(move || create_new_atomic(race, format!("{i}").as_bytes()).unwrap())
                })
                .collect();
            hs.into_iter().map(|h| usize::from(h.join().unwrap())).sum()
        });
        assert_eq!(won, 1);
    }

    #[test]
    fn unwritable_target_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let err = write_atomic(&blocker.join("out.json"), b"y").unwrap_err();
        assert!(err.to_string().contains("file"), "{err}");
    }
}
