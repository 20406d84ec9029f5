//! Claims: one writer per sweep point among concurrent workers (threads, processes, hosts on a
//! shared filesystem).
//!
//! A claim is a small JSON file ([`Holder`]: host, boot id, pid, a token unique to the claim,
//! when it was taken and its latest heartbeat) created with
//! [`seli_io::create_new_atomic`]: among workers racing on one name exactly one creates it, on
//! local filesystems and on NFS (exclusive `link(2)`, no `flock`). The holder rewrites its
//! heartbeat every [`Claims::heartbeat_every`] (atomically, by rename) and removes the file
//! when the work ends, however it ends short of being killed.
//!
//! A claim whose holder is gone is taken over: on the same machine (same host name and boot
//! id), when the process with its pid has ended (or is a zombie, or is this very process
//! without holding the claim: a reused pid); on any machine, when its heartbeat is older than
//! the lease. Cross-host takeover therefore trusts the hosts' clocks to agree to well within
//! the lease (NTP), and a holder paused longer than the lease (a suspended VM) can lose its
//! claim while it still runs; [`Claims::refresh`] reports such a loss.
//!
//! Taking over is serialized by a takeover lock beside the claim (`.NAME.takeover`, created
//! exclusively like a claim): its creator checks that the claim is still the very one it
//! judged stale (same token and heartbeat) and replaces it with its own by rename, so the claim
//! file never disappears and no third worker can create it meanwhile; the others find the lock
//! taken and report the point held. A lock left by a worker killed mid-takeover is removed once
//! older than the lease.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Schema tag of a claim file.
pub const CLAIM_SCHEMA: &str = "seli.claim.v1";

/// Default lease: a claim whose heartbeat is older than this is taken over.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(120);

/// Shortest lease accepted (the heartbeat runs every sixth of it).
pub const MIN_LEASE: Duration = Duration::from_secs(6);

/// The content of a claim file: who holds the claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    /// [`CLAIM_SCHEMA`].
    pub schema: String,
    /// Host name of the holder's machine.
    pub host: String,
    /// Boot id of the holder's machine (Linux; empty elsewhere): tells machines that share a
    /// host name apart.
    pub boot_id: String,
    /// Process id of the holder.
    pub pid: u32,
    /// Unique to this claim.
    pub token: String,
    /// When the claim was taken (Unix seconds).
    pub since: u64,
    /// The holder's latest heartbeat (Unix seconds).
    pub heartbeat: u64,
}

impl Holder {
    /// `pid 123 on node-7, heartbeat 4 s ago`.
    pub fn describe(&self, now: u64) -> String {
        format!(
            "pid {} on {}, heartbeat {} s ago",
            self.pid,
            self.host,
            now.saturating_sub(self.heartbeat)
        )
    }
}

/// What a claim attempt found.
#[derive(Debug)]
pub enum Attempt {
    /// The claim is this worker's; `took_over` names the stale holder it replaced, and why it
    /// was stale.
    Acquired {
        /// The stale holder replaced, and the reason.
        took_over: Option<(Holder, String)>,
    },
    /// A live worker holds it.
    Held(Holder),
}

/// The state of a claim file, for listings.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimState {
    /// No claim file.
    Free,
    /// Held by a live worker.
    Live(Holder),
    /// Left by a worker that is gone (the reason); the next claim takes it over.
    Stale(Holder, String),
}

/// This worker's claims, and the rules for judging others'.
#[derive(Debug)]
pub struct Claims {
    host: String,
    boot_id: String,
    pid: u32,
    lease: Duration,
    held: Mutex<HashMap<PathBuf, Holder>>,
    counter: AtomicU64,
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Claims {
    /// Claims of this process with lease `lease`.
    ///
    /// # Errors
    /// A lease shorter than [`MIN_LEASE`].
    pub fn new(lease: Duration) -> Result<Claims> {
        if lease < MIN_LEASE {
            return Err(Error::Invalid(format!(
                "lease {} s: must be at least {} s (the heartbeat runs every sixth of it)",
                lease.as_secs_f64(),
                MIN_LEASE.as_secs()
            )));
        }
        Ok(Claims {
            host: host_name(),
            boot_id: boot_id(),
            pid: std::process::id(),
            lease,
            held: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(0),
        })
    }

    /// The lease.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// How often [`Claims::refresh`] should run: a sixth of the lease.
    pub fn heartbeat_every(&self) -> Duration {
        self.lease / 6
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Holder>> {
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Why `h` is stale, or `None` when its holder may be alive.
    fn stale_reason(&self, h: &Holder, now: u64) -> Option<String> {
        if h.host == self.host && h.boot_id == self.boot_id {
            if h.pid == self.pid && !held_here().contains(&h.token) {
                return Some(format!("pid {} is this process, which does not hold it", h.pid));
            }
            if !process_alive(h.pid) {
                return Some(format!("process {} on {} has ended", h.pid, h.host));
            }
        }
        let age = now.saturating_sub(h.heartbeat);
        (age > self.lease.as_secs())
            .then(|| format!("heartbeat {age} s old, lease {} s", self.lease.as_secs()))
    }

    /// The state of the claim at `path`.
    ///
    /// # Errors
    /// An unreadable or malformed claim file, named.
    pub fn inspect(&self, path: &Path) -> Result<ClaimState> {
        Ok(match read_holder(path)? {
            None => ClaimState::Free,
            Some(h) => match self.stale_reason(&h, now()) {
                Some(why) => ClaimState::Stale(h, why),
                None => ClaimState::Live(h),
            },
        })
    }

    fn new_holder(&self) -> Holder {
        let t = now();
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        Holder {
            schema: CLAIM_SCHEMA.into(),
            host: self.host.clone(),
            boot_id: self.boot_id.clone(),
            pid: self.pid,
            token: format!("{}-{}-{t}.{nanos:09}-{n}", self.host, self.pid),
            since: t,
            heartbeat: t,
        }
    }

    /// Tries to claim `path` once: creates it, or takes over a stale claim there.
    ///
    /// # Errors
    /// A claim file that cannot be created, read or moved, named.
    pub fn try_claim(&self, path: &Path) -> Result<Attempt> {
        // Each round either creates the file, finds a live holder, or takes over a stale one;
        // a few rounds cover workers racing on the same stale claim.
        for _ in 0..8 {
            let mine = self.new_holder();
            // Registered before the file exists: a racing thread of this process that reads
            // it must not judge it a reused pid's.
            held_here().insert(mine.token.clone());
            if seli_io::create_new_atomic(path, &claim_bytes(&mine)?)? {
                self.held().insert(path.to_path_buf(), mine);
                return Ok(Attempt::Acquired { took_over: None });
            }
            held_here().remove(&mine.token);
            let Some(h) = read_holder(path)? else { continue };
            match self.stale_reason(&h, now()) {
                None => return Ok(Attempt::Held(h)),
                Some(why) => {
                    if let Some(mine) = self.take_over(path, &h)? {
                        self.held().insert(path.to_path_buf(), mine);
                        return Ok(Attempt::Acquired { took_over: Some((h, why)) });
                    }
                }
            }
        }
        match read_holder(path)? {
            Some(h) => Ok(Attempt::Held(h)),
            None => Err(Error::Invalid(format!(
                "{}: could not claim it (other workers kept changing it)",
                path.display()
            ))),
        }
    }

    /// Claims `path`, waiting (polling every `poll`) while a live worker holds it; gives up
    /// when `stop()` turns true (then `Ok(false)`).
    ///
    /// # Errors
    /// Those of [`Claims::try_claim`].
    pub fn claim_waiting(
        &self,
        path: &Path,
        poll: Duration,
        stop: &dyn Fn() -> bool,
    ) -> Result<bool> {
        loop {
            if let Attempt::Acquired { .. } = self.try_claim(path)? {
                return Ok(true);
            }
            if stop() {
                return Ok(false);
            }
            std::thread::sleep(poll);
        }
    }

    /// Replaces the stale claim `stale` at `path` with a claim of this worker, under the
    /// takeover lock; `None` when another worker holds the lock or the claim changed.
    fn take_over(&self, path: &Path, stale: &Holder) -> Result<Option<Holder>> {
        let name = path.file_name().map_or("claim".into(), |s| s.to_string_lossy().into_owned());
        let lock = path.with_file_name(format!(".{name}.takeover"));
        let mine = self.new_holder();
        if !seli_io::create_new_atomic(&lock, &claim_bytes(&mine)?)? {
            // Another worker is taking it over; a lock its killed taker left behind goes once
            // older than the lease.
            let abandoned = std::fs::metadata(&lock)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > self.lease);
            if abandoned {
                let _ = std::fs::remove_file(&lock);
            }
            return Ok(None);
        }
        let taken = (|| -> Result<Option<Holder>> {
            if read_holder(path)?.as_ref() != Some(stale) {
                return Ok(None);
            }
            held_here().insert(mine.token.clone());
            if let Err(e) = seli_io::write_atomic(path, &claim_bytes(&mine)?) {
                held_here().remove(&mine.token);
                return Err(e.into());
            }
            Ok(Some(mine))
        })();
        std::fs::remove_file(&lock).map_err(|e| seli_io::Error::io(&lock, e))?;
        taken
    }

    /// Rewrites the heartbeat of every claim held; returns the claims found lost (taken over
    /// by another worker that judged this one gone), which are forgotten.
    ///
    /// # Errors
    /// A claim file that cannot be read or rewritten, named.
    pub fn refresh(&self) -> Result<Vec<PathBuf>> {
        let mut lost = Vec::new();
        let mut held = self.held();
        let t = now();
        for (path, h) in held.iter_mut() {
            match read_holder(path)? {
                Some(on_disk) if on_disk.token == h.token => {
                    h.heartbeat = t;
                    seli_io::write_atomic(path, &claim_bytes(h)?)?;
                }
                _ => lost.push(path.clone()),
            }
        }
        for p in &lost {
            if let Some(h) = held.remove(p) {
                held_here().remove(&h.token);
            }
        }
        Ok(lost)
    }

    /// Releases the claim at `path`: removes the file if it is still this worker's. `false`
    /// when it was not held (never claimed, or lost).
    ///
    /// # Errors
    /// A claim file that cannot be read or removed, named.
    pub fn release(&self, path: &Path) -> Result<bool> {
        let Some(h) = self.held().remove(path) else { return Ok(false) };
        held_here().remove(&h.token);
        match read_holder(path)? {
            Some(on_disk) if on_disk.token == h.token => {
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                    Err(e) => return Err(seli_io::Error::io(path, e).into()),
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The claims held now.
    pub fn held_paths(&self) -> Vec<PathBuf> {
        self.held().keys().cloned().collect()
    }
}

/// The tokens of the claims held by this process (by any [`Claims`]).
fn held_here() -> std::sync::MutexGuard<'static, std::collections::BTreeSet<String>> {
    static HELD: Mutex<std::collections::BTreeSet<String>> =
        Mutex::new(std::collections::BTreeSet::new());
    HELD.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Removes what workers killed mid-operation left in the claims directory `dir`: temporary
/// files of a claim being created or refreshed (`.seli-*`), takeover locks (`.*.takeover`) and
/// claims moved aside by earlier versions' takeovers (`.*.stale`), once older than `age` (a live worker's are seconds old). Returns how many.
///
/// # Errors
/// A directory that exists but cannot be listed.
pub fn remove_leftovers(dir: &Path, age: Duration) -> Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(seli_io::Error::io(dir, e).into()),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let leftover = name.starts_with(".seli-")
            || (name.starts_with('.') && (name.ends_with(".stale") || name.ends_with(".takeover")));
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|e| e > age);
        if leftover && old && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

fn claim_bytes(h: &Holder) -> Result<Vec<u8>> {
    let mut b = serde_json::to_vec_pretty(h)
        .map_err(|cause| seli_io::Error::Serialize { what: "claim", cause })?;
    b.push(b'\n');
    Ok(b)
}

/// The holder recorded at `path`; `None` when there is no file.
///
/// # Errors
/// An unreadable file, or one that is not a claim.
pub fn read_holder(path: &Path) -> Result<Option<Holder>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(seli_io::Error::io(path, e).into()),
    };
    let h: Holder = serde_json::from_str(&text).map_err(|e| {
        Error::record(
            path,
            format!(
                "not a seli claim ({e}); if no worker runs this point, remove the file and \
                 rerun"
            ),
        )
    })?;
    if h.schema != CLAIM_SCHEMA {
        return Err(Error::record(path, format!("schema '{}' is not {CLAIM_SCHEMA}", h.schema)));
    }
    Ok(Some(h))
}

/// This machine's host name.
fn host_name() -> String {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname writes at most that many
        // bytes.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc == 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            let name = String::from_utf8_lossy(&buf[..end]).into_owned();
            if !name.is_empty() {
                return name;
            }
        }
    }
    std::env::var("HOSTNAME")
        .or_else(|_| std::env::var("COMPUTERNAME"))
        .unwrap_or_else(|_| "unknown-host".into())
}

/// The kernel's boot id (Linux), empty elsewhere.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Whether process `pid` of this machine is running (a zombie counts as ended).
fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(raw) = libc::pid_t::try_from(pid) else { return false };
        // SAFETY: signal 0 only checks that the process exists and may be signalled.
        let rc = unsafe { libc::kill(raw, 0) };
        let exists = rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !exists {
            return false;
        }
        // Linux: a zombie has ended though its pid still answers.
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Some(state) = stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next())
        {
            return !matches!(state, 'Z' | 'X');
        }
        true
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        // No process check: the lease decides.
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims::new(Duration::from_secs(60)).unwrap()
    }

    fn write(path: &Path, h: &Holder) {
        std::fs::write(path, claim_bytes(h).unwrap()).unwrap();
    }

    #[test]
    fn one_claim_per_name_and_release_frees_it() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("claims/p.json");
        let a = claims();
        let b = claims();
        assert!(matches!(a.try_claim(&path).unwrap(), Attempt::Acquired { took_over: None }));
        // Another worker of this host (a live pid: this process) sees it held.
        match b.try_claim(&path).unwrap() {
            Attempt::Held(h) => {
                assert_eq!(h.pid, std::process::id());
                assert!(h.describe(now()).starts_with(&format!("pid {} on ", h.pid)));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(a.inspect(&path).unwrap(), ClaimState::Live(_)));
        assert!(a.release(&path).unwrap());
        assert!(!path.exists());
        assert_eq!(a.inspect(&path).unwrap(), ClaimState::Free);
        assert!(matches!(b.try_claim(&path).unwrap(), Attempt::Acquired { .. }));
        assert!(!a.release(&path).unwrap(), "a no longer holds it");
        assert!(path.exists());
    }

    #[test]
    fn a_dead_local_holder_and_an_expired_remote_one_are_taken_over() {
        let tmp = tempfile::tempdir().unwrap();
        let c = claims();
        let mut h = c.new_holder();
        // A child that has exited and been reaped: its pid is free.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        h.pid = child.id();
        child.wait().unwrap();
        let dead = tmp.path().join("dead.json");
        write(&dead, &h);
        match c.inspect(&dead).unwrap() {
            ClaimState::Stale(_, why) => assert!(why.contains("has ended"), "{why}"),
            other => panic!("{other:?}"),
        }
        match c.try_claim(&dead).unwrap() {
            Attempt::Acquired { took_over: Some((old, why)) } => {
                assert_eq!(old, h);
                assert!(why.contains(&h.pid.to_string()), "{why}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(read_holder(&dead).unwrap().unwrap().pid, std::process::id());

        // Another host: alive as long as its heartbeat is within the lease.
        let remote = tmp.path().join("remote.json");
        let mut r = c.new_holder();
        r.host = "elsewhere".into();
        r.pid = 1;
        r.heartbeat = now() - 30;
        write(&remote, &r);
        assert!(matches!(c.try_claim(&remote).unwrap(), Attempt::Held(_)));
        r.heartbeat = now() - 600;
        write(&remote, &r);
        match c.try_claim(&remote).unwrap() {
            Attempt::Acquired { took_over: Some((_, why)) } => {
                assert!(why.contains("lease 60 s"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        // No leftovers of the takeover beside the claims.
        let mut names: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["dead.json", "remote.json"]);
    }

    #[test]
    fn a_claim_with_this_pid_not_held_here_is_stale() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("p.json");
        let c = claims();
        write(&path, &c.new_holder());
        match c.inspect(&path).unwrap() {
            ClaimState::Stale(_, why) => assert!(why.contains("this process"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn heartbeat_refreshes_and_detects_a_lost_claim() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("p.json");
        let c = claims();
        c.try_claim(&path).unwrap();
        let mut h = read_holder(&path).unwrap().unwrap();
        h.heartbeat -= 50;
        write(&path, &h);
        assert!(c.refresh().unwrap().is_empty());
        let after = read_holder(&path).unwrap().unwrap();
        assert!(after.heartbeat >= h.heartbeat + 50);
        assert_eq!(after.token, h.token);
        // Another worker replaced it (it judged this one gone).
        let mut other = c.new_holder();
        other.host = "elsewhere".into();
        write(&path, &other);
        assert_eq!(c.refresh().unwrap(), std::slice::from_ref(&path));
        assert!(c.held_paths().is_empty());
        assert!(!c.release(&path).unwrap());
        assert_eq!(read_holder(&path).unwrap().unwrap(), other, "the other's claim stays");
    }

    #[test]
    fn racing_threads_take_a_stale_claim_once() {
        // Rounds of racing threads: the window of a rename-aside takeover (a third worker
        // creating the claim while a loser puts back what it moved) showed up under load.
        for round in 0..30 {
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().join("p.json");
            let mut stale = claims().new_holder();
            stale.host = "elsewhere".into();
            stale.heartbeat = 0;
            write(&path, &stale);
            let won = race(&path, 8);
            assert_eq!(won, 1, "round {round}");
            let now = read_holder(&path).unwrap().unwrap();
            assert_ne!(now.token, stale.token);
            assert!(!tmp.path().join(".p.json.takeover").exists());
        }
    }

    /// Workers on threads each trying once to claim `path`: how many acquired it.
    fn race(path: &Path, threads: usize) -> usize {
        let workers: Vec<Claims> = (0..threads).map(|_| claims()).collect();
        let won: usize = std::thread::scope(|s| {
            let hs: Vec<_> = workers
                .iter()
                .map(|w| {
                    s.spawn(move || {
                        usize::from(matches!(w.try_claim(path).unwrap(), Attempt::Acquired { .. }))
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        won
    }

    #[test]
    fn leftovers_of_killed_workers_are_removed_once_old() {
        let tmp = tempfile::tempdir().unwrap();
        for name in
            [".seli-abc.tmp", ".p.json.77-0.stale", ".p.json.takeover", "p.json", "other.txt"]
        {
            std::fs::write(tmp.path().join(name), "x").unwrap();
        }
        assert_eq!(remove_leftovers(tmp.path(), Duration::from_secs(3600)).unwrap(), 0);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(remove_leftovers(tmp.path(), Duration::from_millis(10)).unwrap(), 3);
        let mut left: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["other.txt", "p.json"]);
        assert_eq!(remove_leftovers(&tmp.path().join("none"), Duration::ZERO).unwrap(), 0);
    }

    #[test]
    fn bad_claim_files_and_leases_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("p.json");
        std::fs::write(&path, "{").unwrap();
        let e = claims().try_claim(&path).unwrap_err().to_string();
        assert!(e.contains("p.json") && e.contains("not a seli claim"), "{e}");
        let e = Claims::new(Duration::from_secs(2)).unwrap_err().to_string();
        assert!(e.contains("lease 2 s"), "{e}");
    }
}
