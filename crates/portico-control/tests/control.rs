//! The control plane on its own: changes laid over a real file, recorded in a real store
//! directory, refused with the configuration's key paths, and one change of a function at a
//! time. The node is stood for by an `Apply` that records what it was moved to (and takes
//! its time, as building environments does).

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use portico_control::lambda::LambdaControl;
use portico_control::{Apply, ChangeError, Control, DirStore, Edit};
use portico_lambda::admin::{FunctionAdmin, FunctionChange};
use serde_json::json;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Records each configuration it is moved to, after `delay`; refuses when told to.
struct Node {
    applied: Mutex<Vec<portico_config::Config>>,
    delay: Duration,
    refuse: Mutex<Option<String>>,
}

impl Apply for Node {
    fn apply(
        &self,
        config: portico_config::Config,
    ) -> portico_invoke::BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            if let Some(reason) = self.refuse.lock().unwrap().clone() {
                return Err(reason);
            }
            self.applied.lock().unwrap().push(config);
            Ok(())
        })
    }
}

const FILE: &str = r#"
[functions.f]
runtime = "python3.12"
code = "code"
handler = "app.handler"
"#;

fn setup(tag: &str, delay: Duration) -> (PathBuf, Arc<Control>, Arc<Node>) {
    let dir = std::env::temp_dir().join(format!("portico-control-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("code")).unwrap();
    let file = dir.join("edge.toml");
    std::fs::write(&file, FILE).unwrap();
    let (control, _) = Control::open(Some(&file), "", Box::new(DirStore::beside(&file))).unwrap();
    let control = Arc::new(control);
    let node = Arc::new(Node {
        applied: Mutex::default(),
        delay,
        refuse: Mutex::default(),
    });
    control.set_apply(node.clone());
    (dir, control, node)
}

#[tokio::test]
async fn changes_are_validated_applied_recorded_and_outlive_the_control_plane() {
    let (dir, control, node) = setup("record", Duration::ZERO);
    // Refused with the key path, as `portico validate` says it; nothing applied or kept.
    let error = control
        .change(vec![Edit::set(&["functions", "f", "memory_size_mb"], 64)])
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ChangeError::Invalid(_))
            && error.to_string().contains("functions.f.memory_size_mb"),
        "{error}"
    );
    assert!(node.applied.lock().unwrap().is_empty());
    // Made: applied, then kept.
    control
        .change(vec![Edit::set(&["functions", "f", "memory_size_mb"], 256)])
        .await
        .unwrap();
    assert_eq!(
        node.applied.lock().unwrap()[0].functions["f"].memory_size_mb,
        256
    );
    assert_eq!(control.config().functions["f"].memory_size_mb, 256);
    // A node that cannot move refuses the change, and it is not kept.
    *node.refuse.lock().unwrap() = Some("port 80 taken".into());
    let error = control
        .change(vec![Edit::set(&["functions", "f", "timeout_seconds"], 30)])
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "port 80 taken");
    assert_eq!(control.config().functions["f"].timeout_seconds, 3);
    // Opened again (a restart): the file with the kept change over it.
    let file = dir.join("edge.toml");
    let (_, config) = Control::open(Some(&file), "", Box::new(DirStore::beside(&file))).unwrap();
    assert_eq!(config.functions["f"].memory_size_mb, 256);
    assert_eq!(config.functions["f"].timeout_seconds, 3);
    // A file caught empty (being written) is not taken.
    std::fs::write(&file, "").unwrap();
    let error = control.reload().await.unwrap_err();
    assert!(error.to_string().contains("is empty"), "{error}");
    assert_eq!(control.config().functions["f"].memory_size_mb, 256);
    std::fs::write(&file, FILE).unwrap();
    // A damaged record is refused at start, with what to do.
    std::fs::write(dir.join("edge.state/changes.json"), "{").unwrap();
    let error = Control::open(Some(&file), "", Box::new(DirStore::beside(&file))).unwrap_err();
    assert!(error.to_string().contains("move it aside"), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_function_being_changed_cannot_be_changed_again_until_it_is_done() {
    let (dir, control, _node) = setup("conflict", Duration::from_millis(300));
    let lambda = Arc::new(LambdaControl::new(control, "us-east-1"));
    let update = |memory: u32| {
        let lambda = lambda.clone();
        tokio::spawn(async move {
            lambda
                .change(FunctionChange::UpdateConfiguration {
                    name: "f".into(),
                    request: json!({ "MemorySize": memory }),
                })
                .await
        })
    };
    let first = update(256);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = update(512).await.unwrap().unwrap_err();
    assert_eq!(second.status, 409);
    assert_eq!(second.error_type, "ResourceConflictException");
    assert!(second.message.contains("An update is in progress for resource: arn:aws:lambda:us-east-1:000000000000:function:f"), "{second:?}");
    assert_eq!(first.await.unwrap().unwrap(), "f");
    // Done: changed again.
    update(512).await.unwrap().unwrap();
    // Bad requests are Lambda's errors.
    let error = lambda
        .change(FunctionChange::UpdateConfiguration {
            name: "f".into(),
            request: json!({ "Timeout": "long" }),
        })
        .await
        .unwrap_err();
    assert_eq!(error.error_type, "InvalidParameterValueException");
    let error = lambda
        .change(FunctionChange::UpdateCode {
            name: "f".into(),
            request: json!({ "ZipFile": "not base64!" }),
        })
        .await
        .unwrap_err();
    assert_eq!(error.message, "ZipFile: not base64");
    let error = lambda
        .change(FunctionChange::Delete {
            name: "g".into(),
            qualifier: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (error.status, error.error_type.as_str()),
        (404, "ResourceNotFoundException")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
