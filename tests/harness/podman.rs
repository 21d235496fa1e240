//! A DaemonSet's pod, run by podman the way the kubelet would run it on one node: a private
//! podman (own storage, vfs: no mounts to leak; runc; cgroupfs) and the translation of the
//! manifest's pod template into `podman run` flags. Fields the translation does not know make
//! it panic, so a manifest change cannot be silently left out of the test.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::Value;

/// A podman whose storage, runtime state and configuration live in one directory, removed
/// (with its containers and images) on drop.
pub struct Podman {
    pub dir: PathBuf,
}

impl Podman {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("probe-podman-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // This machine's default `nofile` ulimit is refused by the runtime.
        std::fs::write(
            dir.join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n",
        )
        .unwrap();
        Self { dir }
    }

    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
                "--runtime",
                "runc",
            ]);
        cmd
    }

    /// Runs a podman subcommand to success and returns its stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().expect("running podman");
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self
            .cmd()
            .args(["rm", "--all", "--force", "--time", "0"])
            .output();
        let _ = self.cmd().args(["rmi", "--all", "--force"]).output();
        // Whatever podman left mounted under the directory (shm, netns).
        crate::umount_under(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the kubelet would do with the pod template, as podman flags.
pub struct PodRun {
    /// `podman run` arguments after `run`, image and container args included.
    pub args: Vec<String>,
    /// (probe kind, path, port) of every httpGet probe of the container.
    pub probes: Vec<(String, String, u16)>,
    pub grace_seconds: u64,
    pub image: String,
    /// hostPath directories created for `DirectoryOrCreate` (the test removes them).
    pub created: Vec<PathBuf>,
}

const POD_FIELDS_FOR_THE_CLUSTER: [&str; 4] = [
    "serviceAccountName",
    "dnsPolicy",
    "priorityClassName",
    "tolerations",
];

/// Translates the first container of DaemonSet `ds` (ConfigMaps from `docs`, their files
/// written under `dir`, `spec.nodeName` = `node`).
pub fn pod_run(ds: &Value, docs: &[Value], dir: &Path, node: &str, name: &str) -> PodRun {
    let spec = &ds["spec"]["template"]["spec"];
    let mut args: Vec<String> = vec![
        "--name".into(),
        name.into(),
        "--pull".into(),
        "never".into(),
    ];
    let mut grace_seconds = 30;
    for (key, v) in spec.as_object().expect("a pod spec") {
        match key.as_str() {
            "hostPID" if v == true => args.extend(["--pid".into(), "host".into()]),
            "hostNetwork" if v == true => args.extend(["--network".into(), "host".into()]),
            "terminationGracePeriodSeconds" => grace_seconds = v.as_u64().unwrap(),
            "containers" | "volumes" => {}
            k if POD_FIELDS_FOR_THE_CLUSTER.contains(&k) => {}
            other => panic!("pod spec field {other}: {v} is not translated to podman"),
        }
    }
    let containers = spec["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container expected");
    let c = &containers[0];
    let mut image = String::new();
    let mut probes = Vec::new();
    let mut created = Vec::new();
    let mut tail = Vec::new();
    for (key, v) in c.as_object().unwrap() {
        match key.as_str() {
            "name" | "ports" => {}
            "image" => image = v.as_str().unwrap().to_owned(),
            "imagePullPolicy" => assert_ne!(v, "Always", "a locally built image cannot be pulled"),
            "env" => {
                for e in v.as_array().unwrap() {
                    let value = match (&e["value"], &e["valueFrom"]["fieldRef"]["fieldPath"]) {
                        (Value::String(s), _) => s.clone(),
                        (_, f) if f == "spec.nodeName" => node.to_owned(),
                        _ => panic!("env {e} is not translated to podman"),
                    };
                    args.extend([
                        "--env".into(),
                        format!("{}={value}", e["name"].as_str().unwrap()),
                    ]);
                }
            }
            "livenessProbe" | "readinessProbe" | "startupProbe" => {
                let get = &v["httpGet"];
                assert!(get.is_object(), "{key}: only httpGet probes are translated");
                probes.push((
                    key.clone(),
                    get["path"].as_str().unwrap().to_owned(),
                    port(c, &get["port"]),
                ));
            }
            "resources" => {
                if let Some(m) = v["limits"]["memory"].as_str() {
                    let mib = m.strip_suffix("Mi").expect("a memory limit in Mi");
                    args.extend(["--memory".into(), format!("{mib}m")]);
                }
            }
            "securityContext" => security(v, &mut args),
            "volumeMounts" => {
                for m in v.as_array().unwrap() {
                    let vol = spec["volumes"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|vol| vol["name"] == m["name"])
                        .unwrap_or_else(|| panic!("no volume {}", m["name"]));
                    let source = volume_source(vol, docs, dir, &mut created);
                    let mut opts = vec![if m["readOnly"] == true { "ro" } else { "rw" }];
                    match m["mountPropagation"].as_str() {
                        Some("HostToContainer") => opts.push("rslave"),
                        Some(other) => panic!("mountPropagation {other} is not translated"),
                        None => {}
                    }
                    let target = m["mountPath"].as_str().unwrap();
                    args.extend([
                        "--volume".into(),
                        format!("{}:{target}:{}", source.display(), opts.join(",")),
                    ]);
                }
            }
            "args" => tail.extend(
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_owned()),
            ),
            other => panic!("container field {other}: {v} is not translated to podman"),
        }
    }
    args.push(image.clone());
    args.extend(tail);
    PodRun {
        args,
        probes,
        grace_seconds,
        image,
        created,
    }
}

fn port(container: &Value, port: &Value) -> u16 {
    if let Some(n) = port.as_u64() {
        return n as u16;
    }
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == *port)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {port}")) as u16
}

fn security(ctx: &Value, args: &mut Vec<String>) {
    for (key, v) in ctx.as_object().unwrap() {
        match key.as_str() {
            "privileged" if v == true => args.push("--privileged".into()),
            "privileged" => {}
            // As the kubelet: no tmpfs of podman's own on a read-only root.
            "readOnlyRootFilesystem" if v == true => {
                args.extend(["--read-only".into(), "--read-only-tmpfs=false".into()])
            }
            "allowPrivilegeEscalation" if v == false => {
                args.extend(["--security-opt".into(), "no-new-privileges".into()])
            }
            "capabilities" => {
                for d in v["drop"].as_array().into_iter().flatten() {
                    args.extend(["--cap-drop".into(), d.as_str().unwrap().to_owned()]);
                }
                for a in v["add"].as_array().into_iter().flatten() {
                    args.extend(["--cap-add".into(), format!("CAP_{}", a.as_str().unwrap())]);
                }
            }
            "seccompProfile" if v["type"] == "Unconfined" => {
                args.extend(["--security-opt".into(), "seccomp=unconfined".into()])
            }
            "appArmorProfile" if v["type"] == "Unconfined" => {
                args.extend(["--security-opt".into(), "apparmor=unconfined".into()])
            }
            other => panic!("securityContext.{other}: {v} is not translated to podman"),
        }
    }
}

fn volume_source(vol: &Value, docs: &[Value], dir: &Path, created: &mut Vec<PathBuf>) -> PathBuf {
    if let Some(host) = vol.get("hostPath") {
        let path = PathBuf::from(host["path"].as_str().unwrap());
        match host["type"].as_str() {
            Some("Directory") => assert!(
                path.is_dir(),
                "hostPath {} is not a directory",
                path.display()
            ),
            Some("DirectoryOrCreate") if !path.exists() => {
                std::fs::create_dir_all(&path).unwrap();
                created.push(path.clone());
            }
            Some("DirectoryOrCreate") => {}
            other => panic!("hostPath type {other:?} is not translated"),
        }
        return path;
    }
    if let Some(cm) = vol.get("configMap") {
        let doc = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == cm["name"])
            .unwrap_or_else(|| panic!("no ConfigMap {}", cm["name"]));
        let out = dir.join(format!("configmap-{}", cm["name"].as_str().unwrap()));
        std::fs::create_dir_all(&out).unwrap();
        for (file, text) in doc["data"].as_object().unwrap() {
            std::fs::write(out.join(file), text.as_str().unwrap()).unwrap();
        }
        return out;
    }
    panic!("volume {vol} is not translated to podman")
}
