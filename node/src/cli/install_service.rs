//! `rhizome install-service`: the systemd unit of `packaging/rhizome.service`, written for this
//! machine's user, binary and data dir.
//!
//! The shipped file is the template: its directives name the defaults (user `rhizome`,
//! `/usr/local/bin/rhizome`, `/var/lib/rhizome`), and the few that depend on the flags are
//! replaced line by line, so the installed unit and the shipped one cannot drift apart. This
//! command never calls `systemctl`: it prints what to run.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;

/// The unit, as shipped.
pub const TEMPLATE: &str = include_str!("../../../packaging/rhizome.service");

/// The unit file's name.
pub const UNIT_FILE: &str = "rhizome.service";

/// The data dir of a service when `--data-dir` is not given.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/rhizome";

/// Where `StateDirectory=` directories live.
const STATE_ROOT: &str = "/var/lib";

#[derive(Debug, Args)]
pub struct InstallServiceArgs {
    /// The user the node runs as (its group has the same name). Created as a system user
    /// without login when missing, if run as root; otherwise the command to create it is
    /// printed.
    #[arg(long, default_value = "rhizome")]
    pub user: String,
    /// The rhizome binary the service starts. Not under /home or /root, which the unit hides
    /// from the node.
    #[arg(long, value_name = "PATH", default_value = "/usr/local/bin/rhizome")]
    pub binary: PathBuf,
    /// Where to write `rhizome.service`.
    #[arg(long, value_name = "DIR", default_value = "/etc/systemd/system")]
    pub unit_dir: PathBuf,
    /// Print the unit on standard output (and the plan on standard error); write nothing,
    /// create no user.
    #[arg(long)]
    pub dry_run: bool,
}

/// What the unit is written for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub user: String,
    /// Absolute.
    pub binary: PathBuf,
    /// Absolute.
    pub data_dir: PathBuf,
}

impl Service {
    /// The name of `StateDirectory=` when the data dir is a directory of `/var/lib`, which
    /// systemd then creates and hands to the user.
    fn state_directory(&self) -> Option<String> {
        let rest = self.data_dir.strip_prefix(STATE_ROOT).ok()?;
        let mut parts = rest.components();
        match (parts.next(), parts.next()) {
            (Some(Component::Normal(name)), None) => name.to_str().map(str::to_owned),
            _ => None,
        }
    }
}

/// `root` is the global `--data-dir`, used only when given on the command line or in
/// `RHIZOME_DATA_DIR`.
pub fn install_service(root: &Path, args: InstallServiceArgs) -> Result<()> {
    let data_dir = if data_dir_given() {
        std::path::absolute(root).context("resolving --data-dir")?
    } else {
        PathBuf::from(DEFAULT_DATA_DIR)
    };
    let service = Service {
        user: args.user.clone(),
        binary: std::path::absolute(&args.binary).context("resolving --binary")?,
        data_dir,
    };
    let unit = render(&service)?;
    let unit_path = args.unit_dir.join(UNIT_FILE);
    let mut notes = Vec::new();
    if !service.binary.exists() {
        let here = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "rhizome".into());
        notes.push(format!(
            "{} does not exist: install the binary there (`install -m 0755 {here} {}`) or give \
             its path with --binary",
            service.binary.display(),
            service.binary.display()
        ));
    }
    if ["/home", "/root", "/run/user"]
        .iter()
        .any(|hidden| service.binary.starts_with(hidden))
    {
        notes.push(format!(
            "{} is under a directory the unit hides (ProtectHome=yes): the service could not \
             start it; install the binary elsewhere, such as /usr/local/bin",
            service.binary.display()
        ));
    }
    let user_exists = user_exists(&service.user);
    let useradd = useradd_command(&service);

    if args.dry_run {
        print!("{unit}");
        eprintln!(
            "dry run: would write {} (nothing written)",
            unit_path.display()
        );
        if !user_exists {
            eprintln!(
                "dry run: the user {} does not exist; would run: {}",
                service.user,
                useradd.join(" ")
            );
        }
        for note in &notes {
            eprintln!("note: {note}");
        }
        return Ok(());
    }

    write_unit(&unit_path, &unit)?;
    println!("wrote {}", unit_path.display());
    if !user_exists {
        if is_root() {
            let status = std::process::Command::new(&useradd[0])
                .args(&useradd[1..])
                .status()
                .with_context(|| format!("running {}", useradd.join(" ")))?;
            if !status.success() {
                bail!(
                    "creating the user {} failed ({status}): {}",
                    service.user,
                    useradd.join(" ")
                );
            }
            println!("created the system user {}", service.user);
        } else {
            println!(
                "the user {} does not exist: create it, as root: {}",
                service.user,
                useradd.join(" ")
            );
        }
    }
    for note in &notes {
        println!("note: {note}");
    }
    println!("next:");
    let data_dir = service.data_dir.display();
    if !service.data_dir.join(crate::config::KEY_FILE).exists() {
        println!(
            "  create the node, unless it exists: rhizome init --data-dir {data_dir} --name NAME \
             (or rhizome join)"
        );
    }
    if service.state_directory().is_none() {
        println!(
            "  give the data dir to the user: chown -R {user}:{user} {data_dir}",
            user = service.user
        );
    }
    println!("  systemctl daemon-reload && systemctl enable --now rhizome");
    println!("  systemctl status rhizome; journalctl -u rhizome -f");
    Ok(())
}

/// The unit for `service`: the template with its user, binary and data dir replaced.
pub fn render(service: &Service) -> Result<String> {
    check_user(&service.user)?;
    for (what, path) in [
        ("--binary", &service.binary),
        ("--data-dir", &service.data_dir),
    ] {
        check_path(what, path)?;
    }
    let binary = service.binary.display();
    let data_dir = service.data_dir.display();
    let user = &service.user;
    let state_directory = service.state_directory();
    let mut out = format!(
        "# Written by `rhizome install-service` (user {user}, data dir {data_dir}) from\n\
         # packaging/rhizome.service.\n"
    );
    for line in TEMPLATE.lines() {
        let directive = match line.split_once('=') {
            Some((name, _)) if !line.starts_with('#') => name.trim(),
            _ => "",
        };
        let replaced = match (directive, &state_directory) {
            ("ExecStart", _) => format!("ExecStart={binary} start --data-dir {data_dir}"),
            ("User", _) => format!("User={user}"),
            ("Group", _) => format!("Group={user}"),
            ("ReadWritePaths", _) => format!("ReadWritePaths={data_dir}"),
            ("StateDirectory", Some(name)) => format!("StateDirectory={name}"),
            ("StateDirectory", None) => format!(
                "# {data_dir} is not a directory of {STATE_ROOT}: create it owned by {user}.\n\
                 #{line}"
            ),
            ("StateDirectoryMode", None) => format!("#{line}"),
            _ => line.to_owned(),
        };
        out.push_str(&replaced);
        out.push('\n');
    }
    Ok(out)
}

/// A user name systemd and `useradd` both take.
fn check_user(user: &str) -> Result<()> {
    let mut chars = user.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c));
    if !first_ok || !rest_ok || user.len() > 31 {
        bail!(
            "--user `{user}` is not a user name a service can run as: lowercase letters, digits, \
             `_` and `-`, starting with a letter or `_`, at most 31 characters"
        );
    }
    Ok(())
}

/// An absolute path the unit can hold without quoting: no spaces, quotes, backslashes, nor
/// `%` and `$` (systemd's specifiers and variables).
fn check_path(what: &str, path: &Path) -> Result<()> {
    let Some(text) = path.to_str() else {
        bail!("{what} {} is not UTF-8", path.display());
    };
    if !path.is_absolute() {
        bail!("{what} {text} is not an absolute path");
    }
    if let Some(c) = text
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "\"'\\%$;".contains(*c))
    {
        bail!(
            "{what} {text} holds {c:?}, which a unit file would need escaped: choose another path"
        );
    }
    Ok(())
}

/// Whether `--data-dir` (or `RHIZOME_DATA_DIR`) was given rather than defaulted: a service's
/// default data dir is not the command line's `./rhizome-data`.
fn data_dir_given() -> bool {
    use clap::CommandFactory;
    match crate::cli::Opts::command().try_get_matches_from(std::env::args_os()) {
        Ok(matches) => !matches!(
            matches.value_source("data_dir"),
            None | Some(clap::parser::ValueSource::DefaultValue)
        ),
        Err(_) => true,
    }
}

/// The command that creates `service.user` as a system user with its own group and no login.
fn useradd_command(service: &Service) -> Vec<String> {
    [
        "useradd",
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        &service.data_dir.display().to_string(),
        "--shell",
        "/usr/sbin/nologin",
        &service.user,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Whether a user of that name exists (`getent`, which asks NSS; `/etc/passwd` without it).
fn user_exists(user: &str) -> bool {
    match std::process::Command::new("getent")
        .args(["passwd", user])
        .stdout(std::process::Stdio::null())
        .status()
    {
        Ok(status) => status.success(),
        Err(_) => std::fs::read_to_string("/etc/passwd")
            .map(|passwd| {
                passwd
                    .lines()
                    .any(|line| line.split(':').next() == Some(user))
            })
            .unwrap_or(false),
    }
}

fn is_root() -> bool {
    #[allow(unsafe_code)]
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    euid == 0
}

/// Writes the unit through a temporary file renamed over it, mode 0644.
fn write_unit(path: &Path, unit: &str) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!(
            "{} is not a directory: is this a systemd system? (--unit-dir chooses another)",
            dir.display()
        );
    }
    crate::durable_file::replace(path, unit.as_bytes(), 0o644).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            " (run it as root, or choose another directory with --unit-dir)"
        } else {
            ""
        };
        anyhow::anyhow!("cannot write {}: {e}{hint}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(user: &str, binary: &str, data_dir: &str) -> Service {
        Service {
            user: user.into(),
            binary: binary.into(),
            data_dir: data_dir.into(),
        }
    }

    fn directives(unit: &str) -> Vec<&str> {
        unit.lines()
            .filter(|l| !l.starts_with('#') && l.contains('='))
            .collect()
    }

    #[test]
    fn the_defaults_give_the_shipped_unit() {
        let unit = render(&service(
            "rhizome",
            "/usr/local/bin/rhizome",
            DEFAULT_DATA_DIR,
        ))
        .unwrap();
        let (header, body) = unit.split_at(unit.find("# Rhizome node").unwrap());
        assert!(header.starts_with("# Written by `rhizome install-service`"));
        assert_eq!(body, TEMPLATE);
        for directive in [
            "ExecStart=/usr/local/bin/rhizome start --data-dir /var/lib/rhizome",
            "User=rhizome",
            "StateDirectory=rhizome",
            "ReadWritePaths=/var/lib/rhizome",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "Restart=on-failure",
            "KillSignal=SIGTERM",
            "LimitNOFILE=65536",
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        ] {
            assert!(directives(&unit).contains(&directive), "{directive}");
        }
        assert!(unit.contains("#LoadCredential=rhizome-store-key:/etc/rhizome/store.key"));
    }

    #[test]
    fn user_binary_and_data_dir_are_put_in_place() {
        let unit = render(&service(
            "edge",
            "/opt/rhizome/bin/rhizome",
            "/var/lib/edge",
        ))
        .unwrap();
        let d = directives(&unit);
        assert!(d.contains(&"ExecStart=/opt/rhizome/bin/rhizome start --data-dir /var/lib/edge"));
        assert!(d.contains(&"User=edge") && d.contains(&"Group=edge"));
        assert!(d.contains(&"StateDirectory=edge") && d.contains(&"ReadWritePaths=/var/lib/edge"));

        // Outside /var/lib systemd does not make the directory.
        let unit = render(&service("edge", "/usr/bin/rhizome", "/srv/rhizome")).unwrap();
        let d = directives(&unit);
        assert!(d.contains(&"ReadWritePaths=/srv/rhizome"));
        assert!(!d.iter().any(|l| l.starts_with("StateDirectory")), "{unit}");
        assert!(unit.contains("#StateDirectory=rhizome"));
    }

    #[test]
    fn names_and_paths_a_unit_cannot_hold_are_refused() {
        for (user, binary, dir, named) in [
            ("Ro ot", "/usr/bin/rhizome", "/var/lib/rhizome", "--user"),
            ("rhizome", "bin/rhizome", "/var/lib/rhizome", "absolute"),
            ("rhizome", "/usr/bin/rhizome", "/srv/my data", "--data-dir"),
            (
                "rhizome",
                "/usr/bin/rhi%zome",
                "/var/lib/rhizome",
                "--binary",
            ),
        ] {
            let e = format!("{:#}", render(&service(user, binary, dir)).unwrap_err());
            assert!(e.contains(named), "{e}");
        }
    }
}
