//! Test helpers for the workspace: a local [Azurite] Blob emulator on 127.0.0.1, and
//! [`Intake`], an imitation of the Sekoia.io HTTP intake (module [`intake`]).
//!
//! [`Azurite::start`] finds `node` (or `DEFENDER_NODE`), installs Azurite 3.35 into
//! `<workspace>/target/tools` with `npm install` when it is missing (or uses the installation in
//! `DEFENDER_AZURITE_DIR`), starts the Blob service on a free loopback port with a temporary data
//! directory and telemetry off, and waits until it answers. [`Azurite::stop`] and
//! [`Azurite::restart`] keep the port and the data, for fault tests. Dropping the value kills the
//! process; Azurite also exits by itself when the test process dies (it watches its stdin).
//!
//! [Azurite]: https://github.com/Azure/Azurite

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

pub mod intake;
pub use intake::{Faults, Intake};

/// The emulator's account.
pub const ACCOUNT_NAME: &str = "devstoreaccount1";
/// The emulator's published account key (not a secret).
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The Azurite release line installed when none is found.
pub const AZURITE_VERSION: &str = "3.35";

const API_VERSION: &str = "2021-08-06";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `main.js` and exits when stdin closes, so that a killed test process leaves no server behind.
const WRAPPER_JS: &str = r"'use strict';
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();
// Watching stdin must not keep the process alive once Azurite has closed its server (SIGTERM).
if (typeof process.stdin.unref === 'function') process.stdin.unref();
require(process.env.DEFENDER_AZURITE_MAIN);
";

/// Why Azurite could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AzuriteError {
    /// `node` (or `npm`) is not installed.
    #[error("{0} not found: install Node.js (and npm), or set DEFENDER_NODE to the node binary")]
    ToolMissing(&'static str),
    /// `npm install` failed or Azurite is not where expected.
    #[error("cannot install Azurite: {0}")]
    Install(String),
    /// The server did not come up, or did not stop.
    #[error("Azurite: {0}")]
    Process(String),
    /// A file-system or process error.
    #[error("Azurite I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A request to the emulator failed.
    #[error("Azurite request failed: {0}")]
    Request(String),
}

/// A running (or stopped) Azurite Blob service. Kills the process on drop.
pub struct Azurite {
    node: PathBuf,
    main_js: PathBuf,
    port: u16,
    /// Holds `data/` (the `--location`), `wrapper.js` and `azurite.log`.
    dir: tempfile::TempDir,
    child: Option<Child>,
    http: reqwest::Client,
}

impl fmt::Debug for Azurite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Azurite")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .field("pid", &self.child.as_ref().map(Child::id))
            .finish_non_exhaustive()
    }
}

impl Azurite {
    /// Installs (if needed) and starts Azurite on a free 127.0.0.1 port; returns once it answers.
    pub async fn start() -> Result<Self, AzuriteError> {
        let node = find_node()?;
        let main_js = {
            let node = node.clone();
            tokio::task::spawn_blocking(move || azurite_main_js(&node))
                .await
                .map_err(|e| AzuriteError::Install(e.to_string()))??
        };
        let mut dir = tempfile::Builder::new().prefix("defender-azurite-").tempdir()?;
        fs::create_dir_all(dir.path().join("data"))?;
        fs::write(dir.path().join("wrapper.js"), WRAPPER_JS)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| AzuriteError::Request(e.to_string()))?;

        let mut last_error = None;
        // A port found free can be taken before Azurite binds it: try a few.
        for _ in 0..3 {
            let port = free_port()?;
            let mut azurite = Self {
                node: node.clone(),
                main_js: main_js.clone(),
                port,
                dir,
                child: None,
                http: http.clone(),
            };
            match azurite.spawn_and_wait().await {
                Ok(()) => return Ok(azurite),
                Err(e) => {
                    tracing::warn!(port, error = %e, "Azurite did not start; retrying on another port");
                    last_error = Some(e);
                    azurite.kill_now();
                    dir = std::mem::replace(&mut azurite.dir, tempfile::tempdir()?);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| AzuriteError::Process("did not start".to_owned())))
    }

    /// The Blob service port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT/devstoreaccount1` (path-style).
    pub fn blob_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT_NAME}", self.port)
    }

    /// `http://127.0.0.1:PORT/devstoreaccount1/{container}`.
    pub fn container_url(&self, container: &str) -> String {
        format!("{}/{container}", self.blob_endpoint())
    }

    /// The account name (`devstoreaccount1`).
    pub fn account_name(&self) -> &'static str {
        ACCOUNT_NAME
    }

    /// The published emulator key.
    pub fn account_key(&self) -> &'static str {
        ACCOUNT_KEY
    }

    /// A full connection string for this instance.
    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};BlobEndpoint={};",
            self.blob_endpoint()
        )
    }

    /// The `--location` directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Creates a container (Shared Key signed). `Ok` also when it already exists.
    pub async fn create_container(&self, name: &str) -> Result<(), AzuriteError> {
        let date = chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now())
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let string_to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{API_VERSION}\n/{ACCOUNT_NAME}/{ACCOUNT_NAME}/{name}\nrestype:container"
        );
        let key = STANDARD.decode(ACCOUNT_KEY).expect("the emulator key is base64");
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key");
        mac.update(string_to_sign.as_bytes());
        let signature = STANDARD.encode(mac.finalize().into_bytes());
        let response = self
            .http
            .put(format!("{}?restype=container", self.container_url(name)))
            .header("x-ms-date", date)
            .header("x-ms-version", API_VERSION)
            .header("authorization", format!("SharedKey {ACCOUNT_NAME}:{signature}"))
            .body(Vec::new())
            .send()
            .await
            .map_err(|e| AzuriteError::Request(e.to_string()))?;
        let status = response.status().as_u16();
        if status == 201 || status == 409 {
            Ok(())
        } else {
            let body = response.text().await.unwrap_or_default();
            Err(AzuriteError::Request(format!(
                "create container {name}: HTTP {status}: {body}"
            )))
        }
    }

    /// Stops the server gracefully (SIGTERM, so it saves its data), SIGKILL after 10 s.
    /// The port and the data stay reserved for [`Azurite::restart`].
    pub async fn stop(&mut self) -> Result<(), AzuriteError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if matches!(child.try_wait(), Ok(None)) {
            // std only sends SIGKILL; `kill -TERM <our child's pid>` lets Azurite flush its database.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + STOP_TIMEOUT;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            if matches!(child.try_wait(), Ok(None)) {
                tracing::warn!(pid = child.id(), "Azurite ignored SIGTERM; killing it");
                let _ = child.kill();
            }
        }
        let _ = child.wait();
        // Wait until the port refuses connections, so callers see the outage at once.
        let deadline = Instant::now() + STOP_TIMEOUT;
        while tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))
            .await
            .is_ok()
        {
            if Instant::now() > deadline {
                return Err(AzuriteError::Process(format!(
                    "port {} still answers after stop",
                    self.port
                )));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(())
    }

    /// Starts the server again on the same port with the same data; returns once it answers.
    pub async fn restart(&mut self) -> Result<(), AzuriteError> {
        self.stop().await?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn_and_wait().await {
                Ok(()) => return Ok(()),
                // The port may linger for a moment after the old process is gone.
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "Azurite restart failed; retrying");
                    self.kill_now();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("azurite.log")
    }

    async fn spawn_and_wait(&mut self) -> Result<(), AzuriteError> {
        let log = OpenOptions::new().create(true).append(true).open(self.log_path())?;
        let log_start = log.metadata()?.len();
        let child = Command::new(&self.node)
            .arg(self.dir.path().join("wrapper.js"))
            .args(["--blobHost", "127.0.0.1", "--blobPort"])
            .arg(self.port.to_string())
            .arg("--location")
            .arg(self.data_dir())
            .args(["--silent", "--skipApiVersionCheck", "--disableTelemetry"])
            .env("DEFENDER_AZURITE_MAIN", &self.main_js)
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        tracing::debug!(pid = child.id(), port = self.port, "started Azurite");
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Err(AzuriteError::Process(format!(
                    "exited with {status} during startup on port {}: {}",
                    self.port,
                    self.log_tail(log_start)
                )));
            }
            // Any HTTP answer (an unsigned request gets 403) means the server is up.
            let probe = self
                .http
                .get(format!("{}?comp=list", self.blob_endpoint()))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if probe.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(AzuriteError::Process(format!(
                    "no answer on port {} after {START_TIMEOUT:?}: {}",
                    self.port,
                    self.log_tail(log_start)
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_tail(&self, from: u64) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(self.log_path()) {
            let _ = file.seek(SeekFrom::Start(from));
            let _ = file.read_to_string(&mut text);
        }
        let tail: String = text
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        if tail.trim().is_empty() {
            "(no output)".to_owned()
        } else {
            tail
        }
    }

    fn kill_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.kill_now();
    }
}

fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// `DEFENDER_NODE`, else `node` on `PATH`.
fn find_node() -> Result<PathBuf, AzuriteError> {
    if let Some(node) = std::env::var_os("DEFENDER_NODE") {
        let node = PathBuf::from(node);
        return if node.is_file() {
            Ok(node)
        } else {
            Err(AzuriteError::ToolMissing("node (DEFENDER_NODE)"))
        };
    }
    find_on_path("node").ok_or(AzuriteError::ToolMissing("node"))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| {
            [
                dir.join(name),
                dir.join(format!("{name}.cmd")),
                dir.join(format!("{name}.exe")),
            ]
        })
        .find(|candidate| candidate.is_file())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the testkit lives in <workspace>/crates/defender-testkit")
        .to_path_buf()
}

const MAIN_JS: &str = "dist/src/blob/main.js";

/// Where Azurite's Blob `main.js` is, installing it first if needed.
fn azurite_main_js(node: &Path) -> Result<PathBuf, AzuriteError> {
    if let Some(dir) = std::env::var_os("DEFENDER_AZURITE_DIR") {
        let dir = PathBuf::from(dir);
        return [dir.join("node_modules/azurite").join(MAIN_JS), dir.join(MAIN_JS)]
            .into_iter()
            .find(|p| p.is_file())
            .ok_or_else(|| {
                AzuriteError::Install(format!(
                    "DEFENDER_AZURITE_DIR={} holds neither node_modules/azurite/{MAIN_JS} nor {MAIN_JS}",
                    dir.display()
                ))
            });
    }
    let tools = workspace_root().join("target").join("tools");
    let main_js = tools.join("node_modules/azurite").join(MAIN_JS);
    if main_js.is_file() {
        return Ok(main_js);
    }
    fs::create_dir_all(&tools)?;
    // Several test binaries may start at once: one installs, the others wait for it.
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(tools.join(".azurite-install.lock"))?;
    lock_file(&lock)?;
    if main_js.is_file() {
        return Ok(main_js);
    }
    let npm = node
        .parent()
        .map(|dir| dir.join("npm"))
        .filter(|npm| npm.is_file())
        .or_else(|| find_on_path("npm"))
        .ok_or(AzuriteError::ToolMissing("npm"))?;
    tracing::info!(dir = %tools.display(), "installing azurite@{AZURITE_VERSION} with npm");
    let output = Command::new(npm)
        .arg("install")
        .arg("--prefix")
        .arg(&tools)
        .arg(format!("azurite@{AZURITE_VERSION}"))
        .args(["--no-audit", "--no-fund", "--loglevel=error"])
        .stdin(Stdio::null())
        .output()?;
    if !output.status.success() {
        return Err(AzuriteError::Install(format!(
            "npm install exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    if main_js.is_file() {
        Ok(main_js)
    } else {
        Err(AzuriteError::Install(format!(
            "{} is missing after npm install",
            main_js.display()
        )))
    }
}

#[allow(clippy::incompatible_msrv)] // `File::lock` is std since 1.89; the workspace builds with a newer toolchain.
fn lock_file(file: &File) -> std::io::Result<()> {
    file.lock()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_answers_stops_and_restarts() {
        let mut azurite = Azurite::start().await.expect("Azurite starts");
        let port = azurite.port();
        azurite.create_container("testkit").await.expect("container created");
        azurite
            .create_container("testkit")
            .await
            .expect("an existing container is fine");
        assert!(azurite.connection_string().contains(&format!("127.0.0.1:{port}")));

        azurite.stop().await.expect("stops");
        assert!(!azurite.is_running());
        assert!(
            azurite.create_container("testkit2").await.is_err(),
            "stopped means unreachable"
        );

        azurite.restart().await.expect("restarts");
        assert_eq!(azurite.port(), port);
        assert!(azurite.is_running());
        azurite.create_container("testkit2").await.expect("works again");
    }
}
