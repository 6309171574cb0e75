//! A private PostgreSQL cluster for a test: Debian's binaries (`/usr/lib/postgresql/*/bin`,
//! not on `PATH`), a data dir and socket dir in a temp dir, a free port on 127.0.0.1 only,
//! `trust` authentication, stopped (`pg_ctl stop -m fast`) when dropped.
//!
//! `initdb` and the server refuse to run as root: as root, the cluster runs as `nobody`
//! (`setpriv`), which then owns the data and socket dirs. Without the binaries the test fails,
//! naming `scripts/setup.sh`, which installs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// A running cluster.
#[derive(Debug)]
pub struct Postgres {
    /// The temp dir holding `data/`, `sock/` and `server.log`.
    pub dir: tempfile::TempDir,
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    /// `nobody`'s uid and gid when the test runs as root.
    as_user: Option<(u32, u32)>,
    running: bool,
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb`.
pub fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL's server binaries are missing (no /usr/lib/postgresql/*/bin/initdb): \
             run scripts/setup.sh as root, which installs Debian's `postgresql` package"
        ),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Postgres {
    /// Creates and starts a cluster; `fsync` off (a test's data need not survive the host).
    pub fn start() -> Postgres {
        Self::start_with(&["-c", "fsync=off"])
    }

    /// Creates and starts a cluster with more server settings (`["-c", "name=value", ...]`).
    pub fn start_with(settings: &[&str]) -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("rhizome-pg-")
            .tempdir()
            .unwrap();
        #[allow(unsafe_code)]
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        // nobody/nogroup on Debian.
        let as_user = root.then_some((65534, 65534));
        let data = dir.path().join("data");
        let sock = dir.path().join("sock");
        std::fs::create_dir(&data).unwrap();
        std::fs::create_dir(&sock).unwrap();
        if let Some((uid, gid)) = as_user {
            use std::os::unix::fs::PermissionsExt;
            // The server's user must reach its dirs through the temp dir.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            for d in [&data, &sock] {
                std::os::unix::fs::chown(d, Some(uid), Some(gid)).unwrap();
            }
            let log = dir.path().join("server.log");
            std::fs::write(&log, "").unwrap();
            std::os::unix::fs::chown(&log, Some(uid), Some(gid)).unwrap();
        }
        let mut pg = Postgres {
            port: free_port(),
            dir,
            bin,
            as_user,
            running: false,
        };
        let out = pg
            .server_command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            pg.port,
            sock.display()
        );
        for s in settings {
            options.push(' ');
            options.push_str(s);
        }
        std::fs::write(pg.dir.path().join("options"), &options).unwrap();
        pg.start_server();
        pg
    }

    /// A command of the server's binaries, run as the cluster's user.
    fn server_command(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        let mut cmd = match self.as_user {
            Some((uid, gid)) => {
                let mut cmd = Command::new("setpriv");
                cmd.args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={gid}"),
                    "--clear-groups",
                ])
                .arg(program);
                cmd
            }
            None => Command::new(program),
        };
        cmd.current_dir(self.dir.path());
        cmd
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        let options = std::fs::read_to_string(self.dir.path().join("options")).unwrap();
        self.server_command("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-o", &options])
            .args(args)
            .output()
            .unwrap()
    }

    fn start_server(&mut self) {
        let out = self.pg_ctl(&["-w", "-t", "30", "start"]);
        assert!(
            out.status.success(),
            "starting PostgreSQL failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        self.running = true;
    }

    /// Stops the server (`-m fast`: sessions are cut, their transactions rolled back).
    pub fn stop(&mut self) {
        if self.running {
            let out = self.pg_ctl(&["-w", "-m", "fast", "stop"]);
            assert!(
                out.status.success(),
                "stopping PostgreSQL failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            self.running = false;
        }
    }

    /// Stops the server as a crash would (`-m immediate`: no checkpoint, recovery at the next
    /// start), then starts it again after `down`.
    pub fn crash_and_restart(&mut self, down: Duration) {
        let out = self.pg_ctl(&["-w", "-m", "immediate", "stop"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = false;
        std::thread::sleep(down);
        self.start_server();
    }

    /// The server's log, last lines.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// A connection string for `database` as the superuser `postgres`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs SQL with psql in `database`: its rows, one a line, columns split by `|`.
    pub fn try_sql(&self, database: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", database, "-c", sql])
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// [`Postgres::try_sql`] that must succeed.
    pub fn sql(&self, database: &str, sql: &str) -> String {
        self.try_sql(database, sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}\n{}", self.log_tail()))
    }

    /// Runs SQL from a file (`psql -f`), for scripts of several statements.
    pub fn sql_file(&self, database: &str, file: &Path) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", database, "-f"])
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }

    /// Creates a database.
    pub fn create_database(&self, name: &str) {
        self.sql("postgres", &format!("CREATE DATABASE {name}"));
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self.pg_ctl(&["-w", "-m", "fast", "stop"]);
        }
    }
}
