//! Sandboxes made for real (root, namespaces): what a program inside sees and cannot do.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use portico_sandbox::{Entry, Layout, Resource, Root, Sandboxes, Scratch, User};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::process::Command;

/// Whether this test runs as root (namespaces need it).
fn root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A function's code and a secret beside it, in a directory removed on drop.
struct Fixture {
    dir: PathBuf,
    code: PathBuf,
    secret: PathBuf,
    staging: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fixture(name: &str) -> Fixture {
    // Outside /tmp, which the sandbox replaces anyway.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("portico-sandbox-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let code = dir.join("code");
    std::fs::create_dir_all(&code).unwrap();
    std::fs::write(code.join("handler.txt"), "the code").unwrap();
    let secret = dir.join("secret.pem");
    std::fs::write(&secret, "PRIVATE KEY").unwrap();
    use std::os::unix::fs::PermissionsExt;
    for p in [&dir, &code] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    Fixture {
        staging: dir.join("staging"),
        dir,
        code,
        secret,
    }
}

fn layout(f: &Fixture) -> Layout {
    Layout {
        binds: vec![(f.code.clone(), PathBuf::from("/var/task"))],
        tmp_size_bytes: 1 << 20,
        hidden: vec![f.secret.clone()],
        user: User::LAMBDA,
        staging: f.staging.clone(),
        root: Root::Host,
    }
}

fn entry(cwd: &str) -> Entry {
    Entry {
        cwd: PathBuf::from(cwd),
        ..Entry::default()
    }
}

/// Runs `script` with `sh` in `sandbox`: its exit code and output.
async fn sh(sandbox: &portico_sandbox::Sandbox, script: &str) -> (i32, String) {
    let mut command = Command::new("/bin/sh");
    command
        .args(["-c", script])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = sandbox
        .spawn(command, &entry("/var/task"))
        .await
        .expect("spawn in the sandbox");
    let out = child.wait_with_output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_inside_sees_lambda_s_layout_and_nothing_it_should_not() {
    if !root() {
        eprintln!("not root: no namespaces to make");
        return;
    }
    let f = fixture("layout");
    let sandboxes = Sandboxes::new(&f.staging, None).unwrap();
    let sandbox = sandboxes.create(&layout(&f)).await.unwrap();

    let (code, out) = sh(&sandbox, "id -u; id -g; pwd; cat handler.txt").await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "993\n990\n/var/task\nthe code");

    // The code is read-only; so is the host.
    let (code, out) = sh(&sandbox, "echo x > /var/task/new").await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    let (code, _) = sh(&sandbox, "touch /usr/evil || touch /etc/evil").await;
    assert_ne!(code, 0);

    // The hidden file reads as empty; the host's /tmp is not there.
    let (code, out) = sh(
        &sandbox,
        &format!("cat {}; ls /tmp | wc -l", f.secret.display()),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "0\n", "the secret and the host's /tmp stay outside");

    // /tmp is private, writable and no bigger than asked.
    let (code, out) = sh(
        &sandbox,
        "echo hi > /tmp/a && cat /tmp/a && head -c 2000000 /dev/zero > /tmp/big; echo $?",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("hi\n"), "{out}");
    assert!(out.contains("No space left on device"), "{out}");

    // Only the sandbox's processes: the init, sh, ls and grep.
    let (code, out) = sh(&sandbox, "ls /proc | grep -c '^[0-9]'").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.trim().parse::<u32>().unwrap() <= 4, "{out}");

    // No way back to root: no set-uid, and /dev has only the usual devices.
    let (code, out) = sh(&sandbox, "grep NoNewPrivs /proc/self/status; ls /dev").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(
        out.contains("null") && out.contains("urandom") && !out.contains("sda"),
        "{out}"
    );
    let (code, out) = sh(
        &sandbox,
        "echo ok > /dev/null && head -c 4 /dev/urandom | wc -c",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "4\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_tmp_is_private_empty_open_to_all_and_no_bigger_than_asked() {
    if !root() {
        return;
    }
    let f = fixture("disk");
    let scratch = Scratch::new(&f.dir.join("scratch")).await.unwrap();
    let sandboxes = Sandboxes::new(&f.staging, Some(scratch)).unwrap();
    let mut layout = layout(&f);
    layout.tmp_size_bytes = 64 << 20;
    let first = sandboxes.create(&layout).await.unwrap();
    let second = sandboxes.create(&layout).await.unwrap();
    let device = |sandbox: &portico_sandbox::Sandbox| {
        let pid = sandbox.init_pid().unwrap();
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mounts")).unwrap();
        mounts
            .lines()
            .find(|l| l.split(' ').nth(1) == Some("/tmp"))
            .map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
            .unwrap()
    };
    // Each its own file system, on a loop device, from the disk.
    let (a, b) = (device(&first), device(&second));
    assert!(
        a.starts_with("/dev/loop") && a.ends_with(" /tmp ext4"),
        "{a}"
    );
    assert_ne!(a, b);

    // Empty (no lost+found), open to all with the sticky bit, writable by the sandbox's
    // user; about the size asked, and no more.
    let (code, out) = sh(
        &first,
        "ls -A /tmp | wc -l; stat -c %a /tmp; df -B1M --output=avail /tmp | tail -1; \
         echo hi > /tmp/a && cat /tmp/a; head -c 100000000 /dev/zero > /tmp/big; echo $?",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..2], ["0", "1777"], "{out}");
    let available: u64 = lines[2].trim().parse().unwrap();
    assert!((60..=64).contains(&available), "{out}");
    assert_eq!(lines[3], "hi", "{out}");
    assert!(out.contains("No space left on device"), "{out}");
    // What one wrote, the other does not see.
    let (_, out) = sh(&second, "ls -A /tmp | wc -l").await;
    assert_eq!(out, "0\n");

    // Ended, its device is cleared: nothing is left of it.
    let loop_name = a
        .split(' ')
        .next()
        .unwrap()
        .trim_start_matches("/dev/")
        .to_owned();
    first.end().await;
    let backing = format!("/sys/block/{loop_name}/loop/backing_file");
    let mut cleared = false;
    for _ in 0..100 {
        if !Path::new(&backing).exists() {
            cleared = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(cleared, "{backing} still there");
    second.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_s_processes_end_with_it() {
    if !root() {
        return;
    }
    let f = fixture("end");
    let sandboxes = Sandboxes::new(&f.staging, None).unwrap();
    let sandbox = sandboxes.create(&layout(&f)).await.unwrap();
    let mut command = Command::new("/bin/sh");
    // A grandchild that would outlive its parent.
    command
        .args(["-c", "sleep 300 & wait"])
        .stdout(Stdio::null())
        .kill_on_drop(false);
    let mut child = sandbox.spawn(command, &entry("/")).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    drop(sandbox);
    let status = tokio::time::timeout(std::time::Duration::from_secs(5), child.wait())
        .await
        .expect("killed with the sandbox")
        .unwrap();
    assert!(!status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_layout_says_which_step_failed() {
    if !root() {
        return;
    }
    let f = fixture("bad");
    let sandboxes = Sandboxes::new(&f.staging, None).unwrap();
    let mut layout = layout(&f);
    layout
        .binds
        .push((PathBuf::from("/nonexistent/layer"), PathBuf::from("/opt")));
    let error = sandboxes.create(&layout).await.unwrap_err().to_string();
    assert!(
        error.contains("binding /nonexistent/layer at") && error.contains("/opt"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: cargo test --release -p portico-sandbox -- --ignored --nocapture"]
async fn how_long_a_sandbox_takes() {
    let f = fixture("timing");
    let sandboxes = Sandboxes::new(&f.staging, None).unwrap();
    let mut kept = Vec::new();
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let sandbox = sandboxes.create(&layout(&f)).await.unwrap();
        eprintln!("alone {:?}", started.elapsed());
        kept.push(sandbox);
    }
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let sandbox = sandboxes.create(&layout(&f)).await.unwrap();
        let made = started.elapsed();
        let mut command = Command::new("/bin/true");
        command.kill_on_drop(true);
        let mut child = sandbox.spawn(command, &entry("/")).await.unwrap();
        let spawned = started.elapsed();
        child.wait().await.unwrap();
        eprintln!(
            "made {made:?}, spawned {spawned:?}, ran {:?}",
            started.elapsed()
        );
    }
    // With /tmp on disk, of Lambda's default size (its template made first).
    let scratch = Scratch::new(&f.dir.join("scratch")).await.unwrap();
    let on_disk = Sandboxes::new(&f.staging, Some(scratch)).unwrap();
    let mut layout = layout(&f);
    layout.tmp_size_bytes = 512 << 20;
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let sandbox = on_disk.create(&layout).await.unwrap();
        eprintln!("with /tmp on disk {:?}", started.elapsed());
        let ending = std::time::Instant::now();
        sandbox.end().await;
        eprintln!("ended in {:?}", ending.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_set_before_the_program_runs_and_cannot_be_raised() {
    if !root() {
        return;
    }
    let f = fixture("limits");
    let sandboxes = Sandboxes::new(&f.staging, None).unwrap();
    let sandbox = sandboxes.create(&layout(&f)).await.unwrap();
    let mut command = Command::new("/bin/sh");
    command
        .args(["-c", "ulimit -n; ulimit -n 4096 && echo raised"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let entry = Entry {
        cwd: PathBuf::from("/"),
        cgroups: Vec::new(),
        limits: vec![(Resource::OpenFiles, 1024)],
    };
    let out = sandbox
        .spawn(command, &entry)
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("1024\n"), "{text}");
    assert!(!text.contains("raised"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_program_runs_only_when_started_and_not_at_all_when_dropped() {
    if !root() {
        return;
    }
    let f = fixture("prepared");
    let sandboxes = Sandboxes::new(&f.staging, None).unwrap();
    let sandbox = sandboxes.create(&layout(&f)).await.unwrap();
    let marker = "/tmp/ran";
    let command = |script: &str| {
        let mut command = Command::new("/bin/sh");
        command
            .args(["-c", script])
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        command
    };
    // Dropped unstarted: it never runs.
    let dropped = sandbox
        .prepare(command(&format!("echo x > {marker}")), &entry("/"))
        .await
        .unwrap();
    drop(dropped);
    // Started: it runs, and sees what the other did not write.
    let prepared = sandbox
        .prepare(
            command(&format!(
                "test -e {marker} && echo ran || echo clean; id -u"
            )),
            &entry("/"),
        )
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let out = prepared.start().unwrap().wait_with_output().await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "clean\n993\n");
    // A program that cannot be executed is refused when prepared.
    let missing = sandbox
        .prepare(Command::new("/nowhere/bootstrap"), &entry("/"))
        .await;
    assert!(missing.is_err());
}
