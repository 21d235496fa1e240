//! A real node runtime for the tests: a private containerd (Debian's, with its CRI plugin and
//! runc) whose root, state, socket, CNI configuration and IPAM store live in one temporary
//! directory (a tmpfs), never the machine's. Pods get their network from the CNI bridge plugin (a
//! bridge on the host with the gateway address, a veth into a netns per pod). The image is an
//! OCI layout written here (a static busybox for the sandbox's pause process, and mount
//! points: containers get the host's `/usr` and the test's programs read-only).
//! Everything is removed on drop: sandboxes (their containers, shims, netns), the daemon,
//! mounts left under the directory, the bridge, the pod cgroups the test named.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::cri::{self, Cri};

/// The image every container of the tests runs (imported at start).
pub const IMAGE: &str = "probe.test/node:1";
/// The host end of the pod network: bridge, gateway address, subnet.
pub const BRIDGE: &str = "cni-probe0";
pub const GATEWAY: &str = "10.244.250.1";
const SUBNET: &str = "10.244.250.0/24";

pub struct Containerd {
    pub dir: PathBuf,
    daemon: Child,
    pub cri: Cri,
    sandboxes: Vec<String>,
    /// cgroup directories under the cgroup root that did not exist before (removed deepest first).
    cgroups: Vec<PathBuf>,
}

impl Containerd {
    /// Starts the daemon and imports the image; panics with containerd's log on failure.
    pub fn start(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("probe-ctd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A tmpfs of its own: the overlayfs snapshotter needs an upper directory on a
        // filesystem that supports it, which an overlaid /tmp (the VM guests') is not.
        crate::run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "probe-ctd"])
                .arg(&dir),
        );
        std::fs::create_dir_all(dir.join("cni")).unwrap();
        let d = dir.display();
        std::fs::write(dir.join("config.toml"), config(&d.to_string())).unwrap();
        std::fs::write(
            dir.join("cni/10-probe.conflist"),
            format!(
                r#"{{"cniVersion": "1.0.0", "name": "probe-e2e", "plugins": [
 {{"type": "bridge", "bridge": "{BRIDGE}", "isGateway": true, "ipMasq": false,
   "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{SUBNET}", "gateway": "{GATEWAY}"}}]],
             "dataDir": "{d}/ipam"}}}},
 {{"type": "loopback"}}]}}"#
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                crate::umount_under(&dir);
                panic!("starting containerd (installed by `cargo xtask test`): {e}")
            });
        let socket = dir.join("containerd.sock");
        let cri = match Cri::connect(socket.clone()) {
            Ok(cri) => cri,
            Err(e) => {
                let mut daemon = daemon;
                let _ = daemon.kill();
                let _ = daemon.wait();
                crate::umount_under(&dir);
                panic!("a CRI client: {e}");
            }
        };
        // From here on a panic drops `me`, which stops everything.
        let mut me = Self {
            dir,
            daemon,
            cri,
            sandboxes: Vec::new(),
            cgroups: Vec::new(),
        };
        // The CRI plugin answers once it has loaded (slow under an emulated CPU).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let asked = cri::VersionRequest {
                version: "v1".into(),
            };
            match me.cri.call::<_, cri::VersionResponse>("Version", asked) {
                Ok(v) if v.runtime_name == "containerd" => break,
                Ok(v) => panic!("not containerd: {v:?}"),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("containerd's CRI did not answer: {e}\n{}", me.log()),
            }
            if let Ok(Some(status)) = me.daemon.try_wait() {
                panic!("containerd exited ({status}):\n{}", me.log());
            }
        }
        me.import_image(&socket);
        me
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    fn import_image(&self, socket: &Path) {
        let archive = write_image(&self.dir.join("image"));
        let out = Command::new("ctr")
            .arg("--address")
            .arg(socket)
            .args(["--namespace", "k8s.io", "images", "import"])
            .arg(&archive)
            .output()
            .expect("ctr");
        assert!(
            out.status.success(),
            "ctr images import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// RunPodSandbox; the pod's cgroup parent is remembered for removal.
    pub fn run_pod(&mut self, config: &cri::PodSandboxConfig) -> String {
        if let Some(linux) = &config.linux {
            self.note_cgroups(&linux.cgroup_parent);
        }
        let req = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        let id = self
            .cri
            .call::<_, cri::RunPodSandboxResponse>("RunPodSandbox", req)
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", self.log()))
            .pod_sandbox_id;
        self.sandboxes.push(id.clone());
        id
    }

    /// `/proc/<pid>/ns/net` of the pod's sandbox (its pause process, found in the sandbox's
    /// cgroup under the pod's cgroup parent).
    pub fn pod_netns(&self, sandbox: &str, config: &cri::PodSandboxConfig) -> String {
        let parent = &config.linux.as_ref().expect("a Linux pod").cgroup_parent;
        let procs = crate::cgroup2_root()
            .join(parent.trim_start_matches('/'))
            .join(sandbox)
            .join("cgroup.procs");
        let pid: u32 = std::fs::read_to_string(&procs)
            .expect("the sandbox's cgroup under the pod's cgroup parent")
            .lines()
            .next()
            .and_then(|l| l.parse().ok())
            .expect("the pause process");
        format!("/proc/{pid}/ns/net")
    }

    pub fn pod_ip(&self, sandbox: &str) -> String {
        let req = cri::PodSandboxIdRequest {
            pod_sandbox_id: sandbox.into(),
        };
        let status = self
            .cri
            .call::<_, cri::PodSandboxStatusResponse>("PodSandboxStatus", req)
            .expect("PodSandboxStatus");
        status.status.and_then(|s| s.network).unwrap_or_default().ip
    }

    /// CreateContainer in `sandbox` (`config` is the sandbox's, as the kubelet passes it).
    pub fn create(
        &self,
        sandbox: &str,
        config: &cri::PodSandboxConfig,
        container: cri::ContainerConfig,
    ) -> String {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: sandbox.into(),
            config: Some(container),
            sandbox_config: Some(config.clone()),
        };
        self.cri
            .call::<_, cri::CreateContainerResponse>("CreateContainer", req)
            .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", self.log()))
            .container_id
    }

    pub fn start_container(&self, id: &str) {
        let req = cri::ContainerIdRequest {
            container_id: id.into(),
        };
        self.cri
            .call::<_, cri::Empty>("StartContainer", req)
            .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", self.log()));
    }

    /// Waits for the container to exit; its status (exit code, reason).
    pub fn wait_exited(&self, id: &str, limit: Duration) -> cri::ContainerStatus {
        let deadline = Instant::now() + limit;
        loop {
            let req = cri::ContainerIdRequest {
                container_id: id.into(),
            };
            let status = self
                .cri
                .call::<_, cri::ContainerStatusResponse>("ContainerStatus", req)
                .expect("ContainerStatus")
                .status
                .unwrap_or_default();
            if status.state == cri::CONTAINER_EXITED {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} still runs: {status:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn note_cgroups(&mut self, parent: &str) {
        let mut path = crate::cgroup2_root();
        for part in parent.split('/').filter(|p| !p.is_empty()) {
            path.push(part);
            if !path.exists() && !self.cgroups.contains(&path) {
                self.cgroups.push(path.clone());
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in self.sandboxes.drain(..).rev() {
            let req = || cri::PodSandboxIdRequest {
                pod_sandbox_id: id.clone(),
            };
            let _ = self.cri.call::<_, cri::Empty>("StopPodSandbox", req());
            let _ = self.cri.call::<_, cri::Empty>("RemovePodSandbox", req());
        }
        // SAFETY: kill with a valid pid and signal.
        unsafe { libc::kill(self.daemon.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.daemon.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // Shims outlive their daemon by design: any left of ours (named by our socket).
        let socket = self.dir.join("containerd.sock").display().to_string();
        for pid in crate::pids_with_cmdline(|args| {
            args.first()
                .is_some_and(|a| a.ends_with("containerd-shim-runc-v2"))
                && args.iter().any(|a| *a == socket)
        }) {
            // SAFETY: as above.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        crate::umount_under(&self.dir);
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).output();
        for dir in self.cgroups.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(dir: &str) -> String {
    format!(
        r#"version = 2
root = "{dir}/root"
state = "{dir}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{dir}/containerd.sock"
[ttrpc]
  address = "{dir}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  # The pause process's oom_score_adj (-998) needs CAP_SYS_RESOURCE, which a sandboxed root
  # (this CI's) may lack: keep it at no less than containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{dir}/cni"
"#
    )
}

/// Writes the image as an OCI archive under `dir`: one uncompressed layer (a static busybox as
/// `/busybox`, Debian's merged-/usr links, mount points), entrypoint the pause process.
fn write_image(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    let blobs = dir.join("oci/blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    for d in ["usr", "proc", "sys", "dev", "tmp", "etc", "probe"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    for l in ["bin", "lib", "lib64", "sbin"] {
        std::os::unix::fs::symlink(format!("usr/{l}"), rootfs.join(l)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("busybox"))
        .expect("/bin/busybox (busybox-static, installed by `cargo xtask test`)");
    let layer = dir.join("layer.tar");
    crate::run_ok(
        Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(&rootfs)
            .arg("-cf")
            .arg(&layer)
            .arg("."),
    );
    let blob = |bytes: &[u8]| -> (String, usize) {
        let path = dir.join("blob.tmp");
        std::fs::write(&path, bytes).unwrap();
        let out = crate::run_ok(Command::new("sha256sum").arg(&path));
        let digest = out.split_whitespace().next().unwrap().to_owned();
        std::fs::rename(&path, blobs.join(&digest)).unwrap();
        (format!("sha256:{digest}"), bytes.len())
    };
    let (layer_digest, layer_size) = blob(&std::fs::read(&layer).unwrap());
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/busybox", "sleep", "2147483647"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) = blob(config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = blob(manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": IMAGE}}],
    });
    std::fs::write(dir.join("oci/index.json"), index.to_string()).unwrap();
    std::fs::write(
        dir.join("oci/oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let archive = dir.join("image.tar");
    crate::run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(dir.join("oci"))
            .arg("-cf")
            .arg(&archive)
            .arg("."),
    );
    archive
}
