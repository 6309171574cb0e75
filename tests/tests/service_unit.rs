//! The systemd unit: `packaging/rhizome.service` as shipped and as `rhizome install-service`
//! writes it, checked by `systemd-analyze verify` (which also checks that `ExecStart`'s binary
//! exists, so the units here start the binary under test).

use std::path::Path;
use std::process::Command;

use rhizome_e2e::oneshot::{ok, rhizome_without_data_dir};
use rhizome_e2e::rhizome_bin;

const SHIPPED: &str = include_str!("../../packaging/rhizome.service");

/// Runs `systemd-analyze verify` on the unit file at `path` (named `rhizome.service`) and fails
/// on its errors and on every warning about the unit itself (an unknown directive or a bad value
/// is only a warning to systemd, which ignores the line). Warnings about other units of the
/// host are printed, not counted.
fn verify(path: &Path) {
    let output = match Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(path)
        .output()
    {
        Ok(output) => output,
        Err(e) => panic!(
            "cannot run systemd-analyze ({e}): install it with scripts/setup.sh (Debian's \
             `systemd` package holds it)"
        ),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let about_ours: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("rhizome.service") || line.contains(&*path.to_string_lossy()))
        .collect();
    let unit = std::fs::read_to_string(path).unwrap();
    assert!(
        output.status.success() && about_ours.is_empty(),
        "systemd-analyze verify {} ({}):\n{text}\nthe unit:\n{unit}",
        path.display(),
        output.status
    );
    if !text.trim().is_empty() {
        eprintln!("systemd-analyze, about other units:\n{text}");
    }
}

fn bin() -> String {
    rhizome_bin().to_str().expect("a UTF-8 path").to_owned()
}

/// The unit's non-comment lines.
fn directives(unit: &str) -> Vec<String> {
    unit.lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('='))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_shipped_unit_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let unit = SHIPPED.replace(
        "ExecStart=/usr/local/bin/rhizome ",
        &format!("ExecStart={} ", bin()),
    );
    assert_ne!(
        unit, SHIPPED,
        "the shipped ExecStart is not /usr/local/bin/rhizome"
    );
    let path = tmp.path().join("rhizome.service");
    std::fs::write(&path, &unit).unwrap();
    verify(&path);
    let d = directives(SHIPPED);
    for expected in [
        "ExecStart=/usr/local/bin/rhizome start --data-dir /var/lib/rhizome",
        "User=rhizome",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/rhizome",
        "StateDirectory=rhizome",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "KillSignal=SIGTERM",
    ] {
        assert!(d.iter().any(|l| l == expected), "{expected} missing");
    }
}

#[test]
fn install_service_writes_a_unit_that_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let binary = bin();

    // --dry-run prints the unit and writes nothing.
    let unit_dir = tmp.path().join("units");
    std::fs::create_dir(&unit_dir).unwrap();
    let dry = ok(rhizome_without_data_dir(&[
        "install-service",
        "--dry-run",
        "--binary",
        &binary,
        "--unit-dir",
        unit_dir.to_str().unwrap(),
    ]));
    assert!(
        std::fs::read_dir(&unit_dir).unwrap().next().is_none(),
        "--dry-run wrote something"
    );
    assert!(
        directives(&dry).contains(&format!(
            "ExecStart={binary} start --data-dir /var/lib/rhizome"
        )),
        "{dry}"
    );
    assert!(
        directives(&dry).contains(&"User=rhizome".to_owned()),
        "{dry}"
    );
    let printed = tmp.path().join("rhizome.service");
    std::fs::write(&printed, &dry).unwrap();
    verify(&printed);

    // --unit-dir: written there. `--user root` exists, so no user is created even when the
    // test runs as root.
    let data_dir = tmp.path().join("data");
    let out = ok(rhizome_without_data_dir(&[
        "--data-dir",
        data_dir.to_str().unwrap(),
        "install-service",
        "--user",
        "root",
        "--binary",
        &binary,
        "--unit-dir",
        unit_dir.to_str().unwrap(),
    ]));
    assert!(
        out.contains("systemctl daemon-reload && systemctl enable --now rhizome"),
        "{out}"
    );
    let written = unit_dir.join("rhizome.service");
    let unit = std::fs::read_to_string(&written).unwrap();
    let d = directives(&unit);
    let data_dir = data_dir.display();
    for expected in [
        format!("ExecStart={binary} start --data-dir {data_dir}"),
        "User=root".to_owned(),
        format!("ReadWritePaths={data_dir}"),
    ] {
        assert!(d.contains(&expected), "{expected} missing:\n{unit}");
    }
    // Not under /var/lib: systemd cannot make it as StateDirectory.
    assert!(!d.iter().any(|l| l.starts_with("StateDirectory")), "{unit}");
    verify(&written);
}
