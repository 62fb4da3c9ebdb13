//! create (Modelfile and --from), list, show, cp, rm, and the models people already have: an
//! Ollama store and directories of GGUF files, read in place.

mod common;

use std::fs;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use common::*;
use smelt_store::test_registry::TestRegistry;
use smelt_store::*;

fn smollm2_path() -> std::path::PathBuf {
    smelt_testutil::model_path(smelt_testutil::SMOLLM2)
}

fn name(s: &str) -> ModelName {
    ModelName::parse(s).unwrap()
}

fn create_from_modelfile(
    store: &Store,
    dir: &Path,
    model: &str,
    text: &str,
) -> Result<ResolvedModel> {
    let path = dir.join("Modelfile");
    fs::write(&path, text).unwrap();
    let mf = Modelfile::parse(
        &fs::read_to_string(&path).unwrap(),
        &path.display().to_string(),
    )?;
    store.create(&name(model), &mf.to_spec()?, dir, &mut |_| {})
}

#[test]
fn modelfile_create_links_the_gguf_and_round_trips_through_show() {
    let (dir, store) = temp_store("create");
    fs::create_dir_all(dir.path().join("weights")).unwrap();
    std::os::unix::fs::symlink(smollm2_path(), dir.path().join("weights/smol.gguf")).unwrap();
    let text = r#"
FROM ./weights/smol.gguf
PARAMETER temperature 0.3
PARAMETER stop "<|im_end|>"
PARAMETER num_ctx 2048
TEMPLATE """{{ .System }} {{ .Prompt }}"""
SYSTEM """You are a pirate."""
LICENSE """Apache 2.0"""
MESSAGE user Ahoy?
MESSAGE assistant Arr.
"#;
    let m = create_from_modelfile(&store, dir.path(), "pirate", text).unwrap();
    assert_eq!(m.name.to_string(), "pirate:latest");
    assert_eq!(m.system.as_deref(), Some("You are a pirate."));
    assert_eq!(m.template.as_deref(), Some("{{ .System }} {{ .Prompt }}"));
    assert_eq!(m.license, vec!["Apache 2.0".to_string()]);
    assert_eq!(m.messages.len(), 2);
    assert_eq!(
        serde_json::Value::Object(m.params.clone()),
        serde_json::json!({"temperature": 0.3, "stop": ["<|im_end|>"], "num_ctx": 2048})
    );

    // Linked, not copied: the blob is a link resolving to the cached file.
    let blob = store.blob_path(&smollm2_digest());
    assert_eq!(m.gguf_path, blob);
    assert!(fs::symlink_metadata(&blob)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        fs::canonicalize(&blob).unwrap(),
        fs::canonicalize(smollm2_path()).unwrap()
    );

    // show --modelfile gives a Modelfile that recreates the same model.
    let shown = render_modelfile(&m);
    assert!(
        shown.contains(&format!("FROM {}", blob.display())),
        "{shown}"
    );
    let again = create_from_modelfile(&store, dir.path(), "pirate2", &shown).unwrap();
    assert_eq!(
        (
            &again.template,
            &again.system,
            &again.params,
            &again.license,
            &again.messages
        ),
        (&m.template, &m.system, &m.params, &m.license, &m.messages)
    );

    // A derived model: FROM a store name, overriding only the system prompt and one parameter.
    let child = create_from_modelfile(
        &store,
        dir.path(),
        "pirate-kid",
        "FROM pirate\nSYSTEM tiny pirate\nPARAMETER temperature 1\n",
    )
    .unwrap();
    assert_eq!(child.system.as_deref(), Some("tiny pirate"));
    assert_eq!(child.template, m.template);
    assert_eq!(child.params["temperature"], serde_json::json!(1.0));
    assert_eq!(child.params["num_ctx"], serde_json::json!(2048));

    // FROM a directory holding one GGUF file.
    let from_dir =
        create_from_modelfile(&store, dir.path(), "fromdir", "FROM ./weights\n").unwrap();
    assert_eq!(from_dir.gguf_path, blob);

    // Errors name the problem.
    let err =
        create_from_modelfile(&store, dir.path(), "bad", "FROM ./nothing.gguf\n").unwrap_err();
    assert!(matches!(err, Error::ModelNotFound { .. }), "{err}");
    fs::write(dir.path().join("notgguf.gguf"), b"hello").unwrap();
    let err =
        create_from_modelfile(&store, dir.path(), "bad", "FROM ./notgguf.gguf\n").unwrap_err();
    assert!(err.to_string().contains("not a GGUF file"), "{err}");
}

#[test]
fn list_cp_rm_and_blob_sharing() {
    let (_dir, store) = temp_store("lifecycle");
    let spec = CreateSpec::from_path(&smollm2_path());
    let a = store
        .create(&name("a"), &spec, Path::new("/"), &mut |_| {})
        .unwrap();
    let with_system = CreateSpec {
        system: Some("hi".into()),
        ..spec.clone()
    };
    store
        .create(&name("me/b:v1"), &with_system, Path::new("/"), &mut |_| {})
        .unwrap();
    let copied = store.copy(&name("a"), &name("a-copy:x")).unwrap();
    assert_eq!(copied.digest, a.digest, "a copy is the same manifest");

    let listed: Vec<String> = store
        .list()
        .unwrap()
        .iter()
        .map(|e| e.name.to_string())
        .collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, ["a-copy:x", "a:latest", "me/b:v1"]);
    let entry = store
        .list()
        .unwrap()
        .into_iter()
        .find(|e| e.name == name("a"))
        .unwrap();
    assert_eq!(entry.source, ModelSource::Smelt);
    assert!(entry.size > smollm2_bytes().len() as u64);

    // rm keeps blobs another manifest still uses, then removes them with the last user.
    let blob = store.blob_path(&smollm2_digest());
    let r = store.remove(&name("a")).unwrap();
    assert!(r.blobs_removed.is_empty(), "{r:?}");
    assert!(store.resolve(&name("a-copy:x")).is_ok());
    store.remove(&name("a-copy:x")).unwrap();
    assert!(blob.exists(), "me/b:v1 still uses the GGUF");
    let r = store.remove(&name("me/b:v1")).unwrap();
    assert!(r.blobs_removed.contains(&smollm2_digest()), "{r:?}");
    assert!(!blob.exists() && fs::symlink_metadata(&blob).is_err());
    assert!(
        smollm2_path().exists(),
        "removing a linked blob never touches the user's file"
    );
    assert!(store.list().unwrap().is_empty());
    assert_eq!(
        blob_names(&store),
        Vec::<String>::new(),
        "every blob went with its last manifest"
    );
    // Empty manifest directories are gone too.
    assert!(fs::read_dir(store.root().join("manifests"))
        .unwrap()
        .next()
        .is_none());

    let err = store.remove(&name("a")).unwrap_err();
    assert!(
        matches!(err, Error::ModelNotFound { .. }) && err.to_string().contains("\"a:latest\""),
        "{err}"
    );
}

/// Writes an Ollama-layout store by hand, as Ollama would leave it, with the GGUF linked in.
fn prebuilt_ollama_store(root: &Path) {
    let blobs = root.join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    std::os::unix::fs::symlink(smollm2_path(), blobs.join(smollm2_digest().file_name())).unwrap();
    let layer = |media: &str, text: &[u8]| {
        let d = Digest::of_bytes(text);
        fs::write(blobs.join(d.file_name()), text).unwrap();
        format!(
            r#"{{"mediaType":"{media}","digest":"{d}","size":{}}}"#,
            text.len()
        )
    };
    let config = layer(MEDIA_CONFIG, br#"{"model_format":"gguf","model_family":"llama","model_families":["llama"],"model_type":"134.52M","file_type":"Q4_1","architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#);
    let template = layer(MEDIA_TEMPLATE, b"{{ .Prompt }}");
    let system = layer(MEDIA_SYSTEM, b"Be brief.");
    let params = layer(MEDIA_PARAMS, br#"{"stop":["<|im_end|>"]}"#);
    let model = format!(
        r#"{{"mediaType":"{MEDIA_MODEL}","digest":"{}","size":{}}}"#,
        smollm2_digest(),
        smollm2_bytes().len()
    );
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MEDIA_MANIFEST}","config":{config},"layers":[{model},{template},{system},{params}]}}"#
    );
    let dir = root.join("manifests/registry.ollama.ai/library/smollm2");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("135m"), manifest).unwrap();
    // Debris Ollama can leave: a partial download must not show up as a model.
    fs::write(
        blobs.join(format!("{}-partial", Digest::of_bytes(b"x").file_name())),
        b"partial",
    )
    .unwrap();
}

#[test]
fn reads_an_ollama_store_in_place() {
    let dir = TempDir::new("ollama");
    let ollama = dir.path().join("ollama-models");
    prebuilt_ollama_store(&ollama);
    let cfg = StoreConfig {
        ollama_models: Some(ollama.clone()),
        ..StoreConfig::isolated(dir.path().join("smelt"))
    };
    let store = Store::open(cfg).unwrap();

    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].name.to_string(), "smollm2:135m");
    assert_eq!(listed[0].source, ModelSource::Ollama(ollama.clone()));
    assert_eq!(listed[0].details.family, "llama");
    assert_eq!(listed[0].details.quantization_level, "Q4_1");

    let m = store.resolve(&name("smollm2:135m")).unwrap();
    assert_eq!(
        m.gguf_path,
        ollama.join("blobs").join(smollm2_digest().file_name()),
        "served in place"
    );
    assert_eq!(m.system.as_deref(), Some("Be brief."));
    assert_eq!(m.params["stop"], serde_json::json!(["<|im_end|>"]));

    // smelt never deletes from Ollama's store, and says so.
    let err = store.remove(&name("smollm2:135m")).unwrap_err();
    assert!(
        matches!(err, Error::ReadOnly { .. }) && err.to_string().contains("ollama rm"),
        "{err}"
    );
    assert!(ollama
        .join("manifests/registry.ollama.ai/library/smollm2/135m")
        .exists());

    // Copying into smelt's store links the blobs; the copy survives Ollama removing its own.
    let copy = store.copy(&name("smollm2:135m"), &name("mine")).unwrap();
    assert_eq!(copy.source, ModelSource::Smelt);
    assert_eq!(copy.system.as_deref(), Some("Be brief."));
    fs::remove_dir_all(ollama.join("blobs")).unwrap();
    assert!(store.resolve(&name("mine")).unwrap().gguf_path.exists());
}

#[test]
fn serves_gguf_directories_and_paths_in_place() {
    let dir = TempDir::new("dirs");
    let models = dir.path().join("models");
    fs::create_dir_all(models.join("publisher/repo")).unwrap();
    std::os::unix::fs::symlink(
        smollm2_path(),
        models.join("publisher/repo/SmolLM2-135M-Instruct.Q4_1.gguf"),
    )
    .unwrap();
    fs::write(models.join("publisher/repo/mmproj-model.gguf"), b"GGUF").unwrap();
    fs::write(models.join("notes.txt"), b"x").unwrap();
    let cfg = StoreConfig {
        model_dirs: vec![models.clone()],
        ..StoreConfig::isolated(dir.path().join("smelt"))
    };
    let store = Store::open(cfg).unwrap();

    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        listed[0].name.to_string(),
        "SmolLM2-135M-Instruct.Q4_1:latest"
    );
    assert!(matches!(&listed[0].source, ModelSource::Dir(d) if *d == models));
    assert_eq!(listed[0].digest, None);
    let m = store.resolve(&name("smollm2-135m-instruct.q4_1")).unwrap();
    assert_eq!(
        m.gguf_path,
        models.join("publisher/repo/SmolLM2-135M-Instruct.Q4_1.gguf")
    );

    // A plain path is a model too.
    let m = store
        .resolve_spec(&smollm2_path().display().to_string())
        .unwrap();
    assert_eq!(m.source, ModelSource::File);
    assert_eq!(m.gguf_path, smollm2_path());
    assert!(matches!(
        store.resolve_spec("nothing-here"),
        Err(Error::ModelNotFound { .. })
    ));
}

#[test]
fn ensure_pulls_a_missing_model_once() {
    let reg = TestRegistry::start();
    reg.add_model(
        "library",
        "smollm2",
        "135m",
        smollm2_bytes(),
        Some(smollm2_digest()),
        vec![],
    );
    let (_dir, store) = temp_store("ensure");
    let spec = format!("{}/library/smollm2:135m", reg.host());
    let m = store
        .ensure(&spec, &fast_options(), &mut |_| {}, &AtomicBool::new(false))
        .unwrap();
    assert_eq!(m.gguf_path, store.blob_path(&smollm2_digest()));
    reg.clear_log();
    store
        .ensure(&spec, &fast_options(), &mut |_| {}, &AtomicBool::new(false))
        .unwrap();
    assert!(
        reg.requests().is_empty(),
        "a present model is not pulled again"
    );
}

#[test]
fn a_damaged_manifest_hides_one_model_and_blocks_blob_deletion() {
    let (_dir, store) = temp_store("damaged");
    let spec = CreateSpec::from_path(&smollm2_path());
    store
        .create(&name("good"), &spec, Path::new("/"), &mut |_| {})
        .unwrap();
    store
        .create(&name("other"), &spec, Path::new("/"), &mut |_| {})
        .unwrap();
    let broken = store.manifest_path(&name("broken"));
    fs::create_dir_all(broken.parent().unwrap()).unwrap();
    fs::write(&broken, b"{not json").unwrap();
    let names: Vec<String> = store
        .list()
        .unwrap()
        .iter()
        .map(|e| e.name.to_string())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let err = store.resolve(&name("broken")).unwrap_err();
    assert!(matches!(err, Error::BadManifest { .. }), "{err}");
    // With a manifest it cannot read, rm removes the model but keeps every blob.
    store.remove(&name("good")).unwrap();
    let r = store.remove(&name("other")).unwrap();
    assert!(r.gc_deferred && r.blobs_removed.is_empty(), "{r:?}");
    assert!(store.blob_path(&smollm2_digest()).exists());
}
