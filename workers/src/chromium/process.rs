//! Browser processes that never outlive their worker.
//!
//! Debian's `/usr/bin/chromium` and `/usr/bin/chromium-headless-shell` are
//! shell wrappers that do not `exec`: killing the launched pid would leave
//! the browser running. So the real binary under `/usr/lib/chromium/` is
//! started, through a launcher: the worker's own binary (`clawgress`), run
//! with [`LAUNCH_ENV`] set, which
//!
//! 1. starts a new session, so the browser and every process it forks are
//!    one process group (killed together; a terminal's Ctrl-C does not reach
//!    them: the worker closes its browsers itself);
//! 2. asks the kernel for SIGKILL when its parent dies (`PR_SET_PDEATHSIG`,
//!    through rustix's safe wrapper: the workspace forbids `unsafe`, which a
//!    `pre_exec` hook would need), so a worker killed by the OOM killer or
//!    `kill -9` takes its browsers with it; the browser's own children
//!    (zygotes, renderers, GPU and network processes) exit when it does;
//! 3. `exec`s the browser: same pid, so chromiumoxide's handle, the process
//!    group and the death signal all belong to the browser itself.
//!
//! The kernel sends the death signal when the *thread* that spawned the
//! launcher ends. Browsers are launched from the scheduler's tokio worker
//! threads, which live as long as its runtime; a thread that ends earlier
//! costs a browser, which the pool replaces on the next job.
//!
//! Profile directories are named `clawgress-browser-<pid>-<start>-…` after
//! the worker process (pid and start time, so a reused pid is not mistaken
//! for the owner) and removed when their browser closes; a worker that was
//! killed leaves them behind, and the next pool's start removes them
//! ([`sweep_stale_profiles`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use rustix::process::{Pid, Signal};

/// Set to the real browser binary: this process is a launcher (see above).
pub const LAUNCH_ENV: &str = "CLAWGRESS_EXEC_BROWSER";
/// The pid of the worker that asked for the browser.
pub const PARENT_ENV: &str = "CLAWGRESS_EXEC_BROWSER_PARENT";

/// Where Debian keeps the binaries its `/usr/bin` wrappers start.
const DEBIAN_LIB: &str = "/usr/lib/chromium";
/// Profile directory names start with this.
const PROFILE_PREFIX: &str = "clawgress-browser-";

/// Call first thing in `main`: when this process was started as a browser
/// launcher it becomes the browser (and this returns only on failure, with
/// the exit code); otherwise it returns `None` at once.
pub fn exec_browser_if_asked() -> Option<ExitCode> {
    let browser = std::env::var_os(LAUNCH_ENV)?;
    let parent = std::env::var(PARENT_ENV).ok().and_then(|p| p.parse::<i32>().ok());
    Some(exec_browser(Path::new(&browser), parent))
}

fn exec_browser(browser: &Path, parent: Option<i32>) -> ExitCode {
    use std::os::unix::process::CommandExt as _;
    let fail = |what: &str, error: &dyn std::fmt::Display| {
        eprintln!(
            "clawgress browser launcher: {what} ({error}); the browser {} is not started",
            browser.display()
        );
        ExitCode::from(127)
    };
    if let Err(error) = rustix::process::setsid() {
        return fail("cannot start a new session for the browser's process group", &error);
    }
    if let Err(error) = rustix::process::set_parent_process_death_signal(Some(Signal::KILL)) {
        return fail("cannot set the parent-death signal", &error);
    }
    // The worker may have died between spawning us and the line above; then
    // no signal would ever come.
    let parent_now = rustix::process::getppid().map(|pid| pid.as_raw_nonzero().get());
    if parent.is_some() && parent_now != parent {
        return fail("the worker that asked for this browser is gone", &"parent changed");
    }
    let error = std::process::Command::new(browser)
        .args(std::env::args_os().skip(1))
        .env_remove(LAUNCH_ENV)
        .env_remove(PARENT_ENV)
        .exec();
    fail("cannot execute the browser", &error)
}

/// The binary a Debian wrapper script would start (`/usr/lib/chromium/<name>`),
/// or `path` itself when it is not such a wrapper.
pub fn real_executable(path: &Path) -> PathBuf {
    let is_script = std::fs::read(path).is_ok_and(|bytes| bytes.starts_with(b"#!"));
    match path.file_name() {
        Some(name) if is_script => {
            let real = Path::new(DEBIAN_LIB).join(name);
            if real.is_file() { real } else { path.to_path_buf() }
        }
        _ => path.to_path_buf(),
    }
}

/// This process's start time in clock ticks since boot (`/proc/self/stat`
/// field 22): with the pid it names a process once, even after pid reuse.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesized name; field 22 is the 20th of those.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// A new profile directory in the temporary directory, named after this process.
pub fn new_profile() -> std::io::Result<tempfile::TempDir> {
    let pid = std::process::id();
    let start = start_time(pid).unwrap_or(0);
    tempfile::Builder::new()
        .prefix(&format!("{PROFILE_PREFIX}{pid}-{start}-"))
        .tempdir()
}

/// Full Chromium keeps its process-singleton socket in a directory of its
/// own in the temporary directory (a unix socket path is short; the profile
/// is not), and removes it only when it exits cleanly.
const SINGLETON_PREFIX: &str = "org.chromium.Chromium.";

/// Whether a singleton directory's socket is there and nobody listens on
/// it: its browser is gone. A directory without the socket yet may belong
/// to a browser starting now, and is left alone.
fn singleton_is_dead(dir: &Path) -> bool {
    let socket = dir.join("SingletonSocket");
    socket.exists()
        && matches!(
            std::os::unix::net::UnixStream::connect(&socket),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused
        )
}

/// Removes profile directories whose worker is gone (killed before it could
/// remove them), with any browser process still naming them. Returns how
/// many were removed.
pub fn sweep_stale_profiles() -> usize {
    sweep_stale_profiles_in(&std::env::temp_dir())
}

fn sweep_stale_profiles_in(dir: &Path) -> usize {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let me = rustix::process::getuid().as_raw();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_str().is_some_and(|n| n.starts_with(SINGLETON_PREFIX))
            && entry.metadata().is_ok_and(|m| m.is_dir() && m.uid() == me)
            && singleton_is_dead(&entry.path())
        {
            // What a killed full Chromium leaves of its process singleton.
            if std::fs::remove_dir_all(entry.path()).is_ok() {
                removed += 1;
            }
            continue;
        }
        let Some(owner) = name.to_str().and_then(|n| n.strip_prefix(PROFILE_PREFIX)) else {
            continue;
        };
        let mut parts = owner.split('-');
        let (Some(pid), Some(start)) = (
            parts.next().and_then(|p| p.parse::<u32>().ok()),
            parts.next().and_then(|s| s.parse::<u64>().ok()),
        ) else {
            continue;
        };
        let path = entry.path();
        // Only our own, and only when the worker that made it is gone.
        if !entry.metadata().is_ok_and(|m| m.is_dir() && m.uid() == me) || start_time(pid) == Some(start) {
            continue;
        }
        kill_naming(&path);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                removed += 1;
                tracing::info!(profile = %path.display(), "removed the profile directory of a browser whose worker is gone");
            }
            Err(error) => {
                tracing::warn!(profile = %path.display(), %error, "cannot remove a stale browser profile directory")
            }
        }
    }
    removed
}

/// SIGKILL to each process whose command line names `profile`, and to its
/// process group (a launched browser leads its own).
fn kill_naming(profile: &Path) {
    let needle = format!("--user-data-dir={}", profile.display());
    let Ok(procs) = std::fs::read_dir("/proc") else { return };
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.split(|b| *b == 0).any(|arg| arg == needle.as_bytes())
            && let Some(pid) = Pid::from_raw(pid)
        {
            if rustix::process::getpgid(Some(pid)).is_ok_and(|group| group == pid) {
                let _ = rustix::process::kill_process_group(pid, Signal::KILL);
            }
            let _ = rustix::process::kill_process(pid, Signal::KILL);
        }
    }
}

/// Browsers running now: pid → whether it leads its own process group.
static LIVE: Mutex<BTreeMap<u32, bool>> = Mutex::new(BTreeMap::new());

/// One browser process and its profile directory: both go when this is
/// dropped, whatever path drops it (a closed pool, an aborted task, a panic).
pub(super) struct BrowserProcess {
    pid: Option<u32>,
    /// Started through the launcher: the browser leads its own process group.
    group: bool,
    /// Reaped already: the pid may belong to someone else now.
    reaped: bool,
    profile: Option<tempfile::TempDir>,
}

impl BrowserProcess {
    pub(super) fn new(pid: Option<u32>, group: bool, profile: tempfile::TempDir) -> BrowserProcess {
        if let Some(pid) = pid {
            LIVE.lock().unwrap_or_else(|p| p.into_inner()).insert(pid, group);
        }
        BrowserProcess {
            pid,
            group,
            reaped: false,
            profile: Some(profile),
        }
    }

    pub(super) fn pid(&self) -> Option<u32> {
        self.pid
    }

    pub(super) fn profile(&self) -> Option<&Path> {
        self.profile.as_ref().map(|p| p.path())
    }

    /// SIGKILL to the browser and everything it started. Call before the
    /// browser is reaped: until then its pid (and group id) cannot be reused.
    pub(super) fn kill(&self) {
        if !self.reaped
            && let Some(pid) = self.pid
        {
            kill(pid, self.group);
        }
    }

    /// The browser has been waited for.
    pub(super) fn reaped(&mut self) {
        self.reaped = true;
        if let Some(pid) = self.pid {
            LIVE.lock().unwrap_or_else(|p| p.into_inner()).remove(&pid);
        }
    }
}

impl Drop for BrowserProcess {
    fn drop(&mut self) {
        self.kill();
        if let Some(pid) = self.pid {
            LIVE.lock().unwrap_or_else(|p| p.into_inner()).remove(&pid);
        }
        if let Some(profile) = self.profile.take()
            && let Err(error) = profile.close()
        {
            tracing::warn!(%error, "cannot remove a browser's profile directory");
        }
    }
}

fn kill(pid: u32, group: bool) {
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return;
    };
    if group {
        let _ = rustix::process::kill_process_group(pid, Signal::KILL);
    }
    let _ = rustix::process::kill_process(pid, Signal::KILL);
}

/// SIGKILL to every browser this process runs, for an exit that skips
/// destructors (`std::process::exit` after the drain timeout or a second
/// signal). Profile directories are left to the next pool's sweep: the
/// browsers may still be writing to them.
pub fn kill_all_browsers() {
    let live = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|p| p.into_inner()));
    for (pid, group) in live {
        kill(pid, group);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_debian_wrapper_is_seen_through() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("not-a-browser");
        std::fs::write(&script, "#!/bin/sh\nexec true\n").unwrap();
        // No /usr/lib/chromium/not-a-browser: the path stays.
        assert_eq!(real_executable(&script), script);
        let wrapper = Path::new("/usr/bin/chromium-headless-shell");
        if wrapper.exists() {
            assert_eq!(
                real_executable(wrapper),
                Path::new("/usr/lib/chromium/chromium-headless-shell")
            );
        }
    }

    #[test]
    fn only_dead_singleton_directories_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join(format!("{SINGLETON_PREFIX}dead01"));
        std::fs::create_dir(&dead).unwrap();
        // Bound, then closed: the socket file stays and refuses connections.
        drop(std::os::unix::net::UnixListener::bind(dead.join("SingletonSocket")).unwrap());
        let live = dir.path().join(format!("{SINGLETON_PREFIX}live01"));
        std::fs::create_dir(&live).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(live.join("SingletonSocket")).unwrap();
        let starting = dir.path().join(format!("{SINGLETON_PREFIX}new001"));
        std::fs::create_dir(&starting).unwrap();
        assert_eq!(sweep_stale_profiles_in(dir.path()), 1);
        assert!(!dead.exists());
        assert!(live.exists() && starting.exists());
    }

    #[test]
    fn only_profiles_of_dead_workers_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        let mine = dir
            .path()
            .join(format!("{PROFILE_PREFIX}{me}-{}-abc", start_time(me).unwrap()));
        // Same pid, another start time: a worker that died and whose pid came back.
        let reused = dir.path().join(format!("{PROFILE_PREFIX}{me}-1-abc"));
        // A pid above the kernel's maximum never runs.
        let gone = dir.path().join(format!("{PROFILE_PREFIX}4194305-77-abc"));
        let unrelated = dir.path().join("clawgress-browser-notes");
        for path in [&mine, &reused, &gone, &unrelated] {
            std::fs::create_dir(path).unwrap();
            std::fs::write(path.join("Local State"), "{}").unwrap();
        }
        assert_eq!(sweep_stale_profiles_in(dir.path()), 2);
        assert!(mine.exists() && unrelated.exists());
        assert!(!reused.exists() && !gone.exists());
    }
}
