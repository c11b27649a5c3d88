//! A throwaway PostgreSQL server for tests, benches and tools: the Debian `postgresql`
//! package's binaries (`bash .ci/run` installs it), a fresh cluster in a temporary
//! directory (`initdb`, trust authentication, listening on 127.0.0.1 only), the
//! `postgres` process started on a free port and stopped by its PID when dropped.
//! PostgreSQL refuses to run as root, so as root the server runs as the package's
//! `postgres` user. Not for production: nothing here is durable beyond the process.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running throwaway PostgreSQL server.
#[derive(Debug)]
pub struct TempServer {
    child: Option<Child>,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
}

/// The directory of the server binaries (`initdb`, `postgres`): Debian keeps them in
/// `/usr/lib/postgresql/<version>/bin`, the newest first; else `$PATH`.
fn bin_dir() -> Result<PathBuf, String> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.retain(|p| p.join("postgres").exists());
    versions.sort();
    if let Some(newest) = versions.pop() {
        return Ok(newest);
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|p| p.join("postgres").exists()))
        .ok_or_else(|| "PostgreSQL is not installed (bash .ci/run installs it)".to_string())
}

/// The uid and gid to run the server as: the `postgres` user when we are root.
fn run_as() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres").map_err(|e| e.to_string())?;
    // SAFETY: a valid NUL-terminated name; the result is read at once, before any
    // other call that could overwrite the static it points to.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(
            "as root, PostgreSQL runs as the postgres user, which is missing \
                    (the Debian postgresql package creates it)"
                .into(),
        );
    }
    // SAFETY: checked non-null above.
    Ok(unsafe { Some(((*pw).pw_uid, (*pw).pw_gid)) })
}

fn command(bin: &Path, user: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(bin);
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// An I/O error of step `what`, as text.
fn io(what: &'static str) -> impl Fn(std::io::Error) -> String {
    move |e| format!("{what}: {e}")
}

impl TempServer {
    /// Create a cluster and start the server; waits until it accepts connections.
    pub fn start() -> Result<TempServer, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io("a free port"))?
            .port();
        let dir = std::env::temp_dir().join(format!("sb-pg-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io("the data directory"))?;
        let user = run_as()?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(io("chown"))?;
        }
        let bin = bin_dir()?;
        let data = dir.join("data");
        let out = command(&bin.join("initdb"), user)
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .map_err(io("initdb"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let child = command(&bin.join("postgres"), user)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-k")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io("postgres"))?;
        let server = TempServer {
            child: Some(child),
            port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while postgres::Client::connect(&server.url(), postgres::NoTls).is_err() {
            if Instant::now() > deadline {
                return Err("postgres did not accept connections within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A new database `name` (letters, digits, `_`) on it; its URL.
    pub fn database(&self, name: &str) -> Result<String, postgres::Error> {
        let mut c = postgres::Client::connect(&self.url(), postgres::NoTls)?;
        c.batch_execute(&format!("CREATE DATABASE {name}"))?;
        Ok(format!(
            "postgres://postgres@127.0.0.1:{}/{name}",
            self.port
        ))
    }
}

impl Drop for TempServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGINT: a fast shutdown (SIGTERM would wait for clients to leave).
            // SAFETY: a PID of our own child, not yet reaped.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGINT);
            }
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
