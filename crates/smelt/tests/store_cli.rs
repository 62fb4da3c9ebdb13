//! The store subcommands end to end through the binary, against an isolated store and an
//! in-process registry.

use std::path::Path;
use std::process::{Command, Output};

use smelt_store::test_registry::TestRegistry;
use smelt_store::Digest;

struct Env {
    dir: std::path::PathBuf,
}

impl Env {
    fn new(tag: &str) -> Env {
        let dir = std::env::temp_dir().join(format!("smelt-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("ollama")).unwrap();
        Env { dir }
    }

    /// Runs `smelt ARGS` with every model location pointed into the temporary directory.
    fn smelt(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_smelt"))
            .args(args)
            .current_dir(&self.dir)
            .env("SMELT_MODELS", self.dir.join("store"))
            .env("OLLAMA_MODELS", self.dir.join("ollama"))
            .env_remove("SMELT_MODEL_DIRS")
            .env("HOME", &self.dir)
            .output()
            .unwrap();
        eprintln!(
            "$ smelt {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.smelt(args);
        assert!(out.status.success(), "smelt {args:?} failed");
        String::from_utf8(out.stdout).unwrap()
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.smelt(args);
        assert!(!out.status.success(), "smelt {args:?} should fail");
        String::from_utf8(out.stderr).unwrap()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn smollm2() -> std::path::PathBuf {
    smelt_testutil::model_path(smelt_testutil::SMOLLM2)
}

#[test]
fn create_list_show_cp_rm() {
    let env = Env::new("lifecycle");
    let gguf = smollm2().display().to_string();
    env.ok(&["create", "smol", "--from", &gguf]);
    std::fs::write(
        env.dir.join("Modelfile"),
        "FROM smol\nSYSTEM \"\"\"Answer in one word.\"\"\"\nPARAMETER temperature 0.1\nPARAMETER stop <|im_end|>\n",
    )
    .unwrap();
    env.ok(&["create", "terse"]); // ./Modelfile by default

    let list = env.ok(&["list"]);
    let lines: Vec<&str> = list.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("ID") && lines[0].contains("SIZE"),
        "{list}"
    );
    assert!(
        list.contains("smol:latest") && list.contains("terse:latest") && list.contains("98 MB"),
        "{list}"
    );

    let show = env.ok(&["show", "terse"]);
    for needle in [
        "architecture",
        "llama",
        "134.52M",
        "Q4_1",
        "context length",
        "temperature",
        "0.1",
        "Answer in one word.",
    ] {
        assert!(show.contains(needle), "{needle:?} missing from\n{show}");
    }
    assert_eq!(
        env.ok(&["show", "terse", "--system"]).trim(),
        "Answer in one word."
    );
    let modelfile = env.ok(&["show", "terse", "--modelfile"]);
    assert!(
        modelfile.contains("FROM ") && modelfile.contains("PARAMETER stop"),
        "{modelfile}"
    );
    assert!(
        env.ok(&["show", &gguf]).contains("Q4_1"),
        "a GGUF path is a model too"
    );

    assert!(env
        .ok(&["cp", "terse", "terse2"])
        .contains("copied 'terse:latest' to 'terse2:latest'"));
    assert!(env
        .ok(&["rm", "terse", "smol"])
        .contains("deleted 'smol:latest'"));
    let list = env.ok(&["ls"]);
    assert!(
        list.contains("terse2:latest") && !list.contains("smol:latest"),
        "{list}"
    );
    env.ok(&["rm", "terse2"]);
    assert!(
        smollm2().exists(),
        "the linked file is the user's and stays"
    );

    assert!(env.fails(&["show", "nosuch"]).contains("not found"));
    assert!(env.fails(&["rm", "nosuch"]).contains("not found"));
    assert!(env
        .fails(&["create", "x", "-f", "missing-Modelfile"])
        .contains("missing-Modelfile"));
}

#[test]
fn pull_from_a_plain_http_registry() {
    let reg = TestRegistry::start();
    let gguf: std::sync::Arc<[u8]> = std::fs::read(smollm2()).unwrap().into();
    let digest =
        Digest::parse("sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
            .unwrap();
    reg.add_model("library", "smollm2", "135m", gguf, Some(digest), vec![]);
    reg.redirect_blobs(true);
    let env = Env::new("pull");
    let name = format!("{}/library/smollm2:135m", reg.host());

    let err = env.fails(&["pull", &name]);
    assert!(err.contains("pass --insecure"), "{err}");
    let out = env.smelt(&["pull", "--insecure", &name]);
    assert!(out.status.success());
    let progress = String::from_utf8(out.stderr).unwrap();
    assert!(
        progress.contains("pulling manifest") && progress.contains("success"),
        "{progress}"
    );
    assert!(
        progress.contains(&format!("pulling {} 98 MB / 98 MB", digest.short())),
        "{progress}"
    );
    assert!(env.ok(&["list"]).contains(&name));
    assert!(Path::new(&env.dir.join("store/blobs").join(digest.file_name())).exists());
}
