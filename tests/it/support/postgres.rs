//! A throwaway PostgreSQL server for the tests of the PostgreSQL backend: its own temporary
//! directory, 127.0.0.1 on a free port, a `gateway` role with a password and a `gateway` database
//! it owns. Dropping it stops the server and removes the directory, also when the test panicked.
//!
//! The binaries (`initdb`, `pg_ctl`, `postgres`, `psql`, `pg_isready`, all from one directory) are
//! looked for in `WECOM_GATEWAY_PG_BIN_DIR` if it is set (and only there), else on PATH (a symlink
//! is followed to the directory it points into), else in Debian's `/usr/lib/postgresql/<version>/bin`,
//! the highest version first. Without them a test is skipped with one line on stderr, or fails
//! when `WECOM_GATEWAY_REQUIRE_POSTGRES` is set (to anything but empty or `0`), as in CI.
//!
//! PostgreSQL refuses to run as root: as root, `initdb` and `pg_ctl` run as the `postgres` system
//! user (which Debian's package creates) through `runuser`, and the directories are given to it.
//!
//! `initdb` is slow (seconds), so each test binary runs it once, into a template with the role and
//! the database already made, and each server starts on a copy of that template. The template is
//! removed when the test binary exits. `fsync` and `synchronous_commit` keep their defaults: the
//! servers are as durable as a real one (initdb's own final flush of the template is skipped: the
//! page cache survives the process kills tests do, only a machine crash would lose it).

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The role the gateway connects as, its password, and its database.
pub const USER: &str = "gateway";
pub const PASSWORD: &str = "secret-pw";
pub const DATABASE: &str = "gateway";

const REQUIRE_VAR: &str = "WECOM_GATEWAY_REQUIRE_POSTGRES";
const BIN_DIR_VAR: &str = "WECOM_GATEWAY_PG_BIN_DIR";
const NOT_INSTALLED: &str = "PostgreSQL is not installed (install Debian's postgresql package: apt-get install -y postgresql)";
const TOOLS: [&str; 5] = ["initdb", "pg_ctl", "postgres", "psql", "pg_isready"];
/// How long a server may take to start or stop.
const SERVER_WAIT: Duration = Duration::from_secs(30);
/// Tries of a new free port when the one picked was taken before the server could bind it.
const PORT_TRIES: usize = 5;

/// A running PostgreSQL server of one test. See the module's doc.
pub struct Postgres {
    server: Server,
    /// Whether the server should be running (false after `pause`): what `Drop` has to stop.
    running: AtomicBool,
    /// Removed after `Drop::drop` has stopped the server (fields drop after it).
    _dir: tempfile::TempDir,
}

impl Postgres {
    /// Start a fresh server, or `None` (after one line on stderr) when PostgreSQL is not installed
    /// and `WECOM_GATEWAY_REQUIRE_POSTGRES` does not make that a failure. Panics when PostgreSQL
    /// is installed and the server cannot be started.
    pub async fn start() -> Option<Postgres> {
        let Some(tools) = Tools::find() else {
            let required = std::env::var_os(REQUIRE_VAR).unwrap_or_default();
            if !required.is_empty() && required != "0" {
                panic!("{NOT_INSTALLED}, and {REQUIRE_VAR}={required:?} makes this a failure");
            }
            // Straight to stderr: the test harness would hide an eprintln of a passing test, and
            // a skipped test must not read as a plain "ok".
            let _ = writeln!(
                std::io::stderr(),
                "skipped: {NOT_INSTALLED}; set {REQUIRE_VAR}=1 to make this a failure"
            );
            return None;
        };
        let started = blocking(move || Postgres::start_blocking(tools)).await;
        Some(started.unwrap_or_else(|e| panic!("{e}")))
    }

    /// `postgres://gateway:secret-pw@127.0.0.1:PORT/gateway`.
    pub fn url(&self) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{DATABASE}",
            self.server.port
        )
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// The directory the PostgreSQL binaries were taken from (for `psql`, `pg_isready`, ...).
    pub fn bin_dir(&self) -> &Path {
        &self.server.tools.bin
    }

    /// The server's data directory (PGDATA).
    pub fn data_dir(&self) -> &Path {
        &self.server.data
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.server.log).unwrap_or_default()).into_owned()
    }

    /// Stop the server cleanly (fast shutdown: connections are cut, everything committed stays).
    pub async fn pause(&self) {
        self.stop("fast").await
    }

    /// Stop the server as a crash would (immediate shutdown: no checkpoint; the next `resume`
    /// recovers from the WAL).
    pub async fn crash(&self) {
        self.stop("immediate").await
    }

    /// Start the paused server again, on the same port and data. Panics if the port was taken
    /// meanwhile.
    pub async fn resume(&self) {
        let server = self.server.clone();
        self.running.store(true, Ordering::SeqCst);
        blocking(move || server.start().and_then(|()| server.wait_ready()))
            .await
            .unwrap_or_else(|e| panic!("resuming PostgreSQL: {e}"));
    }

    async fn stop(&self, mode: &'static str) {
        let server = self.server.clone();
        blocking(move || server.stop(mode))
            .await
            .unwrap_or_else(|e| panic!("stopping PostgreSQL: {e}"));
        self.running.store(false, Ordering::SeqCst);
    }

    fn start_blocking(tools: Tools) -> Result<Postgres, String> {
        let template = template(&tools)?;
        let dir = new_dir(&tools, "wecom-gateway-pg-")?;
        let data = dir.path().join("data");
        run(
            Command::new("cp").arg("-a").arg(template).arg(&data),
            "copying the template cluster",
        )?;
        let mut server = Server {
            tools,
            data,
            log: dir.path().join("server.log"),
            socket_dir: dir.path().to_path_buf(),
            port: 0,
            tcp: true,
        };
        // The port is free when picked, and may be taken by someone else before the server binds
        // it: then try another.
        let mut tries = 0;
        loop {
            tries += 1;
            server.port = free_port()?;
            match server.start() {
                Ok(()) => break,
                Err(e) if e.contains("Address already in use") && tries < PORT_TRIES => continue,
                Err(e) => return Err(e),
            }
        }
        let postgres = Postgres {
            server,
            running: AtomicBool::new(true),
            _dir: dir,
        };
        // On an error the server is stopped by dropping `postgres`.
        postgres.server.wait_ready()?;
        Ok(postgres)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running.load(Ordering::SeqCst) {
            self.server.kill();
        }
    }
}

/// What the blocking operations on a server need.
#[derive(Clone)]
struct Server {
    tools: Tools,
    data: PathBuf,
    log: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    /// Whether to listen on 127.0.0.1 (the template's setup server listens on its socket only).
    tcp: bool,
}

impl Server {
    /// Start with `pg_ctl -w`, which also notices a server that exits during its start (such as
    /// one whose port is taken). The error holds what the server logged.
    fn start(&self) -> Result<(), String> {
        std::fs::write(
            self.data.join("instance.conf"),
            format!(
                "port = {}\nunix_socket_directories = {}\n{}",
                self.port,
                conf_quote(&self.socket_dir),
                if self.tcp {
                    ""
                } else {
                    "listen_addresses = ''\n"
                },
            ),
        )
        .map_err(|e| format!("writing instance.conf: {e}"))?;
        let logged = std::fs::metadata(&self.log).map_or(0, |m| m.len() as usize);
        let started = run(
            self.tools
                .server_cmd("pg_ctl")
                .args(["start", "-w", "-t"])
                .arg(SERVER_WAIT.as_secs().to_string())
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(&self.log),
            &format!("starting PostgreSQL (port {})", self.port),
        );
        started.map_err(|e| {
            let log = std::fs::read(&self.log).unwrap_or_default();
            let log = String::from_utf8_lossy(log.get(logged..).unwrap_or_default());
            // A start that timed out may leave a server behind.
            self.kill();
            format!("{e}\nthe server's log:\n{log}")
        })?;
        Ok(())
    }

    /// Poll `pg_isready` over TCP until the server accepts connections.
    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + SERVER_WAIT;
        let mut pause = Duration::from_millis(5);
        loop {
            let status = self
                .tools
                .client_cmd("pg_isready")
                .args([
                    "-q",
                    "-t",
                    "2",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    USER,
                    "-d",
                    DATABASE,
                ])
                .arg("-p")
                .arg(self.port.to_string())
                .status()
                .map_err(|e| format!("running pg_isready: {e}"))?;
            if status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "PostgreSQL on 127.0.0.1:{} did not accept connections within {SERVER_WAIT:?} (pg_isready: {status})",
                    self.port
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    fn stop(&self, mode: &str) -> Result<(), String> {
        run(
            self.tools
                .server_cmd("pg_ctl")
                .args(["stop", "-w", "-m", mode, "-t"])
                .arg(SERVER_WAIT.as_secs().to_string())
                .arg("-D")
                .arg(&self.data),
            &format!("stopping PostgreSQL (port {}, {mode} shutdown)", self.port),
        )
        .map(drop)
    }

    /// Stop at once, ignoring every error; for `Drop` and failed starts.
    fn kill(&self) {
        if self.stop("immediate").is_err() {
            // pg_ctl could not do it: signal the postmaster ourselves (SIGQUIT: immediate stop).
            let pid = std::fs::read_to_string(self.data.join("postmaster.pid")).unwrap_or_default();
            if let Some(pid) = pid.lines().next().filter(|p| p.parse::<u32>().is_ok()) {
                let _ = Command::new("kill")
                    .args(["-QUIT", pid])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// The PostgreSQL binaries, and whether the server must run as the `postgres` user.
#[derive(Clone)]
struct Tools {
    bin: PathBuf,
    as_postgres: bool,
}

impl Tools {
    fn find() -> Option<Tools> {
        Some(Tools {
            bin: find_bin_dir()?,
            as_postgres: is_root(),
        })
    }

    /// A command for the server's owner: `initdb` and `pg_ctl`.
    fn server_cmd(&self, tool: &str) -> Command {
        if self.as_postgres {
            let mut cmd = Command::new(runuser());
            cmd.args(["-u", "postgres", "--"]).arg(self.bin.join(tool));
            clean(cmd)
        } else {
            self.client_cmd(tool)
        }
    }

    /// A command run as ourselves: `psql` and `pg_isready`.
    fn client_cmd(&self, tool: &str) -> Command {
        clean(Command::new(self.bin.join(tool)))
    }
}

/// No PG* variables of the environment (PGHOST, PGPORT, PGDATA, PGPASSWORD, ...) reach the tools,
/// no standard input, and a working directory any user can enter.
fn clean(mut cmd: Command) -> Command {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PG") {
            cmd.env_remove(name);
        }
    }
    cmd.current_dir("/").stdin(Stdio::null());
    cmd
}

fn find_bin_dir() -> Option<PathBuf> {
    let complete = |dir: &Path| TOOLS.iter().all(|tool| is_executable(&dir.join(tool)));
    if let Some(dir) = std::env::var_os(BIN_DIR_VAR).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return complete(&dir).then_some(dir);
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let initdb = dir.join("initdb");
        if !is_executable(&initdb) {
            continue;
        }
        // Debian's links on PATH may name initdb alone: take the directory it really is in.
        if let Some(real) = std::fs::canonicalize(&initdb)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            if complete(&real) {
                return Some(real);
            }
        }
        if complete(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name();
            let version = name
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .map(|(_, bin)| bin)
        .find(|bin| complete(bin))
}

/// `runuser` is in /usr/sbin, which a root shell's PATH need not have.
fn runuser() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join("runuser"))
        .find(|runuser| is_executable(runuser))
        .unwrap_or_else(|| PathBuf::from("runuser"))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata("/proc/self") {
        Ok(m) => m.uid() == 0,
        Err(_) => Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0"),
    }
}

/// A new temporary directory, given to the `postgres` user when the server runs as it.
fn new_dir(tools: &Tools, prefix: &str) -> Result<tempfile::TempDir, String> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| format!("creating a temporary directory: {e}"))?;
    if tools.as_postgres {
        run(
            Command::new("chown").arg("postgres:").arg(dir.path()),
            "giving the temporary directory to the postgres user (running as root)",
        )?;
    }
    Ok(dir)
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| format!("finding a free port on 127.0.0.1: {e}"))
}

/// A string in postgresql.conf's quotes.
fn conf_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "''"))
}

/// Run `cmd`; its output, or an error naming `what` with everything it printed.
fn run(cmd: &mut Command, what: &str) -> Result<Output, String> {
    let program = cmd.get_program().to_owned();
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: running {}: {e}", Path::new(&program).display()))?;
    if output.status.success() {
        return Ok(output);
    }
    let args: Vec<&OsStr> = cmd.get_args().collect();
    Err(format!(
        "{what}: `{} {}` failed ({}):\n{}{}",
        Path::new(&program).display(),
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    ))
}

/// Run blocking work off the runtime's threads; a panic in it goes on in the caller.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("PostgreSQL harness: blocking task failed: {e}"),
        },
    }
}

// ---------------------------------------------------------------- the template cluster

/// The data directory of this test binary's template cluster, made on first use and removed when
/// the binary exits; an error is kept and repeated to every later caller.
static TEMPLATE: OnceLock<Result<PathBuf, String>> = OnceLock::new();

fn template(tools: &Tools) -> Result<&'static Path, String> {
    TEMPLATE
        .get_or_init(|| make_template(tools))
        .as_deref()
        .map_err(Clone::clone)
}

fn make_template(tools: &Tools) -> Result<PathBuf, String> {
    let dir = new_dir(tools, "wecom-gateway-pg-template-")?;
    let data = dir.path().join("data");
    let initdb = |locale: &str| {
        run(
            tools
                .server_cmd("initdb")
                .arg("-D")
                .arg(&data)
                .args(["--username=postgres", "--encoding=UTF8", "--no-sync"])
                .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
                .arg(format!("--locale={locale}")),
            "initdb",
        )
    };
    // C.UTF-8 where the system has it (classification of non-ASCII text), else plain C.
    if let Err(e) = initdb("C.UTF-8").or_else(|e| {
        if e.contains("invalid locale") {
            initdb("C")
        } else {
            Err(e)
        }
    }) {
        let hint = if tools.as_postgres {
            "\n(as root, initdb runs as the postgres user through runuser: that user must exist and be able to enter the temporary directory, see TMPDIR)"
        } else {
            ""
        };
        return Err(format!("{e}{hint}"));
    }
    let mut conf = std::fs::read_to_string(data.join("postgresql.conf"))
        .map_err(|e| format!("reading postgresql.conf: {e}"))?;
    conf.push_str(
        "\n# wecom-gateway tests (fsync and synchronous_commit keep their defaults)\n\
         listen_addresses = '127.0.0.1'\n\
         max_connections = 200\n\
         shared_buffers = 64MB\n\
         # port and unix_socket_directories, per server\n\
         include_if_exists = 'instance.conf'\n",
    );
    std::fs::write(data.join("postgresql.conf"), conf)
        .map_err(|e| format!("writing postgresql.conf: {e}"))?;

    // Make the role and the database on a server with no TCP port at all.
    let server = Server {
        tools: tools.clone(),
        data: data.clone(),
        log: dir.path().join("setup.log"),
        socket_dir: dir.path().to_path_buf(),
        port: 5432,
        tcp: false,
    };
    server.start()?;
    let made = run(
        tools
            .client_cmd("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres"])
            .args(["-d", "postgres", "-p", "5432", "-h"])
            .arg(&server.socket_dir)
            .arg("-c")
            .arg(format!("CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'"))
            .arg("-c")
            .arg(format!("CREATE DATABASE {DATABASE} OWNER {USER}")),
        "creating the gateway role and database",
    );
    if let Err(e) = made {
        server.kill();
        return Err(e);
    }
    if let Err(e) = server.stop("fast") {
        server.kill();
        return Err(e);
    }
    let _ = std::fs::remove_file(data.join("instance.conf"));

    let path = dir.keep();
    // Statics are never dropped: remove the template when the test binary exits.
    extern "C" {
        fn atexit(callback: extern "C" fn()) -> std::os::raw::c_int;
    }
    extern "C" fn remove_template() {
        if let Some(Ok(data)) = TEMPLATE.get() {
            if let Some(dir) = data.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
    // SAFETY: atexit is the C library's, and the callback neither panics nor unwinds.
    unsafe {
        atexit(remove_template);
    }
    Ok(path.join("data"))
}
