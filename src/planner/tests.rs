//! Unit tests of the whole planner, driven by one `check(dockerfile, options, expect)` helper:
//! `expect` is the `BuildGraph::dump()` (or `error: ...`) written inline below. With
//! `UPDATE_EXPECT=1` a mismatching expectation is rewritten in this file.

use super::*;
use crate::digest::Digest;

struct FakeResolver;

impl BaseImageResolver for FakeResolver {
    fn resolve(&self, reference: &str, platform: &Platform) -> Result<ResolvedImage, ResolveError> {
        let config = match reference {
            "docker.io/library/busybox:latest" => ImageConfig {
                env: vec!["PATH=/bin".to_string()],
                cmd: Some(vec!["sh".to_string()]),
                ..ImageConfig::default()
            },
            "docker.io/library/trigger:1" => ImageConfig {
                on_build: vec![
                    "ARG FROM_TRIGGER=t".to_string(),
                    "RUN echo $FROM_TRIGGER".to_string(),
                ],
                ..ImageConfig::default()
            },
            _ => return Err(format!("{reference}: not found").into()),
        };
        Ok(ResolvedImage {
            digest: Digest::of_bytes(format!("{reference} {platform}").as_bytes()),
            config,
        })
    }
}

fn options() -> BuildOptions {
    BuildOptions {
        platform: Some("linux/amd64".parse().expect("valid platform")),
        ..BuildOptions::default()
    }
}

#[track_caller]
fn check(dockerfile: &str, options: &BuildOptions, expect: &str) {
    let parsed = crate::parser::parse(dockerfile, "Dockerfile").expect("test Dockerfile parses");
    let options = BuildOptions {
        source: Some(dockerfile.to_string()),
        ..options.clone()
    };
    let actual = match plan(&parsed, &options, &FakeResolver) {
        Ok(graph) => graph.dump(),
        Err(error) => format!("error: {error}\n"),
    };
    let expect = expect.strip_prefix('\n').unwrap_or(expect);
    if actual == expect {
        return;
    }
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/planner/tests.rs");
        let source = std::fs::read_to_string(&path).expect("read tests.rs");
        let old = format!("r#\"\n{expect}\"#");
        let new = format!("r#\"\n{actual}\"#");
        assert!(
            source.contains(&old),
            "UPDATE_EXPECT: expectation not found verbatim"
        );
        std::fs::write(&path, source.replacen(&old, &new, 1)).expect("write tests.rs");
        return;
    }
    panic!(
        "plan differs (UPDATE_EXPECT=1 rewrites it)\n--- expected\n{expect}\n--- actual\n{actual}"
    );
}

#[test]
fn scratch_stage_gets_the_default_path() {
    check(
        "FROM scratch\nCOPY app /\nENTRYPOINT [\"/app\"]\n",
        &options(),
        r#"
stage 0 -: base=scratch platform=linux/amd64 last=n2
  config.env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
  config.entrypoint: ["/app"]
n0 stage=0 inputs=[] FROM scratch
  source scratch
n1 stage=0 inputs=[n0] COPY app /
  copy sources=[Context { path: "app", extract_archive: false }] dest="/"
  history: "COPY app / # buildkit"
n2 stage=0 inputs=[n1] ENTRYPOINT ["/app"]
  meta Entrypoint { argv: ["/app"], reset_cmd: true }
  history: "ENTRYPOINT [\"/app\"]" (empty layer)
target: stage 0 n2
"#,
    );
}

#[test]
fn only_the_stages_the_target_needs_are_planned() {
    check(
        "FROM busybox AS unused\nRUN exit 1\nFROM busybox AS dep\nRUN echo dep\nFROM scratch\nCOPY --from=dep /x /x\n",
        &options(),
        r#"
stage 1 dep: base=image docker.io/library/busybox:latest platform=linux/amd64 last=n2
  config.env: ["PATH=/bin"]
  config.cmd: ["sh"]
stage 2 -: base=scratch platform=linux/amd64 last=n3
  config.env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
n0 stage=2 inputs=[] FROM scratch
  source scratch
n1 stage=1 inputs=[] FROM docker.io/library/busybox:latest
  source image docker.io/library/busybox:latest@sha256:99f3fe7a49d3f0917cb910b4f971ae3065ba303e1f6edfbfdc59f52bf629b9be linux/amd64
n2 stage=1 inputs=[n1] RUN echo dep
  exec argv=["/bin/sh", "-c", "echo dep"] env=["PATH=/bin"] user="" workdir="/" network=default security=sandbox
  history: "RUN /bin/sh -c echo dep # buildkit"
n3 stage=2 inputs=[n0,n2] COPY --from=dep /x /x
  copy sources=[Node { node: NodeId(2), path: "/x" }] dest="/x"
  history: "COPY /x /x # buildkit"
target: stage 2 n3
"#,
    );
}

#[test]
fn onbuild_triggers_are_expanded_with_the_child_scope() {
    check(
        "FROM trigger:1\n",
        &with_build_arg("FROM_TRIGGER", "override"),
        r#"
stage 0 -: base=image docker.io/library/trigger:1 platform=linux/amd64 last=n2
n0 stage=0 inputs=[] FROM docker.io/library/trigger:1
  source image docker.io/library/trigger:1@sha256:ec4221f537dea4534ffaa759e3543ac45ec258adf25d1090f2ac20be98f8a450 linux/amd64
n1 stage=0 inputs=[n0] ARG FROM_TRIGGER=t
  meta Arg([("FROM_TRIGGER", Some("override"))])
  history: "ARG FROM_TRIGGER=override" (empty layer)
n2 stage=0 inputs=[n1] RUN echo $FROM_TRIGGER
  exec argv=["/bin/sh", "-c", "echo $FROM_TRIGGER"] env=["FROM_TRIGGER=override", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] user="" workdir="/" network=default security=sandbox build_args=[("FROM_TRIGGER", Some("override"))]
  history: "RUN |1 FROM_TRIGGER=override /bin/sh -c echo $FROM_TRIGGER # buildkit"
target: stage 0 n2
"#,
    );
}

#[test]
fn errors_carry_file_line_and_column() {
    check(
        "FROM busybox\n\n    WORKDIR ${DIR:?set DIR}\n",
        &options(),
        r#"
error: Dockerfile:3:5: WORKDIR: failed to process "${DIR:?set DIR}": DIR: set DIR
"#,
    );
    check(
        "FROM busybox\nRUN true\n",
        &BuildOptions {
            target: Some("nope".to_string()),
            ..options()
        },
        r#"
error: target stage "nope" could not be found; stages are: #0 (unnamed)
"#,
    );
}

fn with_build_arg(key: &str, value: &str) -> BuildOptions {
    BuildOptions {
        build_args: vec![(key.to_string(), Some(value.to_string()))],
        ..options()
    }
}
