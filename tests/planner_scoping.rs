//! Planner scoping and graph shape: ARG/ENV scoping as Docker does it, stage pruning, stage
//! references, history text, and which build args reach a step's cache key.
//!
//! Snapshot cases compare `BuildGraph::dump()` with `fixtures/planner/<name>.expected`;
//! `UPDATE_EXPECT=1 cargo test --test planner_scoping` rewrites them.

use kiln::cache::CacheKey;
use kiln::digest::Digest;
use kiln::planner::{
    plan, BaseImageResolver, BuildGraph, BuildOptions, CopySource, ImageConfig, NodeId, Op,
    PlanError, Platform, ResolveError, ResolvedImage, SourceOp,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// Images the tests know: `alpine`, `busybox` and `onbuild-base` (with ONBUILD triggers).
struct FakeResolver {
    images: BTreeMap<String, ImageConfig>,
}

impl FakeResolver {
    fn new() -> FakeResolver {
        let mut images = BTreeMap::new();
        images.insert(
            "docker.io/library/alpine:3.19".to_string(),
            ImageConfig {
                env: vec![
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                ],
                cmd: Some(vec!["/bin/sh".into()]),
                ..ImageConfig::default()
            },
        );
        images.insert(
            "docker.io/library/busybox:latest".to_string(),
            ImageConfig {
                env: vec!["PATH=/bin".into()],
                cmd: Some(vec!["sh".into()]),
                ..ImageConfig::default()
            },
        );
        images.insert(
            "docker.io/library/onbuild-base:1".to_string(),
            ImageConfig {
                env: vec!["PATH=/bin".into(), "BASE=yes".into()],
                working_dir: "/src".into(),
                on_build: vec!["COPY . /src/".into(), "RUN make -C $BASE".into()],
                ..ImageConfig::default()
            },
        );
        FakeResolver { images }
    }
}

impl BaseImageResolver for FakeResolver {
    fn resolve(&self, reference: &str, platform: &Platform) -> Result<ResolvedImage, ResolveError> {
        let config = self
            .images
            .get(reference)
            .ok_or_else(|| format!("{reference}: not found"))?;
        Ok(ResolvedImage {
            digest: Digest::of_bytes(format!("{reference} {platform}").as_bytes()),
            config: config.clone(),
        })
    }
}

fn options() -> BuildOptions {
    BuildOptions {
        platform: Some("linux/amd64".parse().unwrap()),
        ..BuildOptions::default()
    }
}

fn with_args(args: &[(&str, &str)]) -> BuildOptions {
    BuildOptions {
        build_args: args
            .iter()
            .map(|(k, v)| (k.to_string(), Some(v.to_string())))
            .collect(),
        ..options()
    }
}

fn try_plan(dockerfile: &str, options: &BuildOptions) -> Result<BuildGraph, PlanError> {
    let parsed = kiln::parser::parse(dockerfile, "Dockerfile")
        .unwrap_or_else(|errors| panic!("test Dockerfile does not parse: {errors:?}"));
    let options = BuildOptions {
        source: Some(dockerfile.to_string()),
        ..options.clone()
    };
    plan(&parsed, &options, &FakeResolver::new())
}

fn plan_ok(dockerfile: &str, options: &BuildOptions) -> BuildGraph {
    try_plan(dockerfile, options).unwrap_or_else(|error| panic!("plan failed: {error}"))
}

fn plan_err(dockerfile: &str, options: &BuildOptions) -> String {
    match try_plan(dockerfile, options) {
        Ok(graph) => panic!("expected an error, got:\n{}", graph.dump()),
        Err(error) => error.to_string(),
    }
}

/// Plans `dockerfile` and compares the dump with `fixtures/planner/<name>.expected`.
fn check(name: &str, dockerfile: &str, options: &BuildOptions) {
    let actual = plan_ok(dockerfile, options).dump();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/planner")
        .join(format!("{name}.expected"));
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} is missing; run with UPDATE_EXPECT=1 to create it:\n{actual}",
            path.display()
        )
    });
    if expected != actual {
        panic!(
            "plan dump of {name} differs from {} (UPDATE_EXPECT=1 rewrites it)\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        );
    }
}

fn history(graph: &BuildGraph) -> Vec<String> {
    graph
        .chain(graph.target)
        .into_iter()
        .filter_map(|id| graph.node(id).history.as_ref())
        .map(|entry| {
            if entry.empty_layer {
                format!("{} (empty)", entry.created_by)
            } else {
                entry.created_by.clone()
            }
        })
        .collect()
}

fn exec_ops(graph: &BuildGraph) -> Vec<&kiln::planner::ExecOp> {
    graph
        .chain(graph.target)
        .into_iter()
        .filter_map(|id| match &graph.node(id).op {
            Op::Exec(exec) => Some(exec),
            _ => None,
        })
        .collect()
}

/// Keys of every node, as the executor computes them (fake content digests for context
/// sources), in topological order.
fn keys(graph: &BuildGraph) -> BTreeMap<NodeId, CacheKey> {
    let mut keys: BTreeMap<NodeId, CacheKey> = BTreeMap::new();
    for id in graph.topological_order() {
        let source_digests: Vec<Option<Digest>> = match &graph.node(id).op {
            Op::Copy(copy) => copy
                .sources
                .iter()
                .map(|source| match source {
                    CopySource::Context { path, .. } => Some(Digest::of_bytes(path.as_bytes())),
                    CopySource::Url { url, .. } => Some(Digest::of_bytes(url.as_bytes())),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let key = graph.cache_key(id, &keys, &source_digests).unwrap();
        keys.insert(id, key);
    }
    keys
}

/// The key of the node described as `description` in the target chain.
fn key_of(graph: &BuildGraph, description: &str) -> CacheKey {
    let keys = keys(graph);
    let id = graph
        .nodes
        .iter()
        .find(|node| node.description == description)
        .unwrap_or_else(|| panic!("no node {description:?} in\n{}", graph.dump()))
        .id;
    keys[&id].clone()
}

#[test]
fn smoke_dump() {
    check(
        "smoke",
        "FROM alpine:3.19 AS build\nWORKDIR /app\nCOPY . .\nRUN make\nFROM scratch\nCOPY --from=build /app/out /out\nCMD [\"/out\"]\n",
        &options(),
    );
}

#[test]
fn unused_stage_is_pruned_even_when_it_would_fail() {
    let dockerfile = "\
FROM alpine:3.19 AS deps
RUN echo deps
FROM no-such-image:${UNSET:?never_expanded} AS broken
COPY ${ALSO_UNSET:?never_expanded} /x
FROM deps AS final
RUN echo final
";
    let graph = plan_ok(dockerfile, &options());
    let planned: Vec<usize> = graph.stages.iter().map(|stage| stage.index).collect();
    assert_eq!(planned, vec![0, 2]);
    assert!(
        graph.nodes.iter().all(|node| node.stage != 1),
        "{}",
        graph.dump()
    );
    // Building the broken stage itself fails, naming the FROM line.
    let error = plan_err(
        dockerfile,
        &BuildOptions {
            target: Some("broken".into()),
            ..options()
        },
    );
    assert!(error.starts_with("Dockerfile:3:1: FROM: "), "{error}");
    assert!(error.contains("never_expanded"), "{error}");
}

#[test]
fn target_selects_a_stage_and_an_unknown_one_lists_the_stages() {
    let dockerfile = "FROM alpine:3.19 AS base\nRUN echo base\nFROM base AS Test\nRUN echo test\nFROM base\nRUN echo last\n";
    let graph = plan_ok(
        dockerfile,
        &BuildOptions {
            target: Some("test".into()),
            ..options()
        },
    );
    assert_eq!(graph.target_stage, 1);
    assert_eq!(graph.node(graph.target).description, "RUN echo test");
    assert_eq!(graph.stages.len(), 2);
    let error = plan_err(
        dockerfile,
        &BuildOptions {
            target: Some("prod".into()),
            ..options()
        },
    );
    assert_eq!(
        error,
        "target stage \"prod\" could not be found; stages are: base, test, #2 (unnamed)"
    );
}

#[test]
fn copy_from_by_name_index_and_image() {
    let dockerfile = "\
FROM alpine:3.19 AS one
RUN echo one > /one
FROM alpine:3.19 AS two
RUN echo two > /two
FROM scratch
COPY --from=one /one /
COPY --from=1 /two /
COPY --from=busybox /bin/busybox /bin/
";
    let graph = plan_ok(dockerfile, &options());
    check("copy_from", dockerfile, &options());
    let copies: Vec<(&str, NodeId)> = graph
        .chain(graph.target)
        .into_iter()
        .filter_map(|id| match &graph.node(id).op {
            Op::Copy(copy) => match &copy.sources[0] {
                CopySource::Node { node, path } => Some((path.as_str(), *node)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(copies.len(), 3);
    assert_eq!(copies[0].1, graph.stage(0).unwrap().last);
    assert_eq!(copies[1].1, graph.stage(1).unwrap().last);
    match &graph.node(copies[2].1).op {
        Op::Source(SourceOp::Image { reference, .. }) => {
            assert_eq!(reference, "docker.io/library/busybox:latest")
        }
        other => panic!("COPY --from=busybox should read an image source, got {other:?}"),
    }
    // Every COPY --from node lists what it reads as an input, so the executor waits for it.
    for (_, source) in &copies {
        assert!(graph.nodes.iter().any(|node| node.inputs.contains(source)));
    }
    let error = plan_err("FROM alpine:3.19\nCOPY --from=0 /a /b\n", &options());
    assert!(
        error.starts_with("Dockerfile:2:1: invalid stage index 0"),
        "{error}"
    );
}

#[test]
fn from_stage_carries_config_and_env_into_the_child() {
    let dockerfile = "\
FROM alpine:3.19 AS base
ENV APP_HOME=/opt/app LEVEL=1
WORKDIR $APP_HOME
USER nobody
FROM base
ENV LEVEL=2
RUN echo $APP_HOME
WORKDIR sub
";
    let graph = plan_ok(dockerfile, &options());
    let run = exec_ops(&graph)[0];
    assert_eq!(run.argv, vec!["/bin/sh", "-c", "echo $APP_HOME"]);
    assert!(
        run.env.contains(&"APP_HOME=/opt/app".to_string()),
        "{:?}",
        run.env
    );
    assert!(run.env.contains(&"LEVEL=2".to_string()), "{:?}", run.env);
    assert_eq!(run.workdir, "/opt/app");
    assert_eq!(run.user, "nobody");
    let target = graph.target_stage();
    assert_eq!(target.config.working_dir, "/opt/app/sub");
    assert_eq!(target.config.env_value("LEVEL"), Some("2"));
    // The child stage's first node starts from the base stage's last node.
    let chain = graph.chain(graph.target);
    assert!(chain.contains(&graph.stage(0).unwrap().last));
}

#[test]
fn global_args_in_from_and_redeclaration() {
    let dockerfile = "\
ARG VERSION=3.19
ARG IMAGE=alpine
FROM ${IMAGE}:${VERSION} AS plain
RUN echo no redeclaration
LABEL v=\"[$VERSION]\"
FROM ${IMAGE}:${VERSION}
ARG VERSION
RUN echo redeclared
LABEL v=\"[$VERSION]\"
";
    let graph = plan_ok(
        dockerfile,
        &BuildOptions {
            target: Some("plain".into()),
            ..options()
        },
    );
    assert_eq!(graph.target_stage().config.labels["v"], "[]");
    assert!(!exec_ops(&graph)[0]
        .env
        .iter()
        .any(|e| e.starts_with("VERSION=")));
    let graph = plan_ok(dockerfile, &options());
    match &graph.target_stage().base {
        kiln::planner::StageBase::Image { reference, .. } => {
            assert_eq!(reference, "docker.io/library/alpine:3.19")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(graph.target_stage().config.labels["v"], "[3.19]");
    assert!(exec_ops(&graph)[0]
        .env
        .contains(&"VERSION=3.19".to_string()));
}

#[test]
fn build_args_override_defaults_and_undeclared_ones_warn() {
    let dockerfile = "\
ARG TAG=latest
FROM busybox:${TAG}
ARG GREETING=hello
ARG TAG
ENV SHOWN=$GREETING-$TAG
";
    let graph = plan_ok(
        dockerfile,
        &with_args(&[("GREETING", "hi"), ("NOT_DECLARED", "x")]),
    );
    assert_eq!(
        graph.target_stage().config.env_value("SHOWN"),
        Some("hi-latest")
    );
    assert_eq!(
        graph.warnings,
        vec!["[Warning] One or more build-args [NOT_DECLARED] were not consumed".to_string()]
    );
    let graph = plan_ok(
        dockerfile,
        &with_args(&[("TAG", "latest"), ("GREETING", "yo")]),
    );
    assert_eq!(
        graph.target_stage().config.env_value("SHOWN"),
        Some("yo-latest")
    );
    assert!(graph.warnings.is_empty());
    // A build arg overriding the global default changes FROM.
    let error = plan_err(dockerfile, &with_args(&[("TAG", "1.0")]));
    assert!(
        error.contains("docker.io/library/busybox:1.0: not found"),
        "{error}"
    );
}

#[test]
fn build_arg_without_value_comes_from_the_environment() {
    std::env::set_var("KILN_PLANNER_TEST_FROM_ENV", "from-env");
    let dockerfile = "FROM busybox\nARG KILN_PLANNER_TEST_FROM_ENV\nARG KILN_PLANNER_TEST_UNSET_IN_ENV=default\nLABEL a=$KILN_PLANNER_TEST_FROM_ENV b=$KILN_PLANNER_TEST_UNSET_IN_ENV\n";
    let options = BuildOptions {
        build_args: vec![
            ("KILN_PLANNER_TEST_FROM_ENV".into(), None),
            ("KILN_PLANNER_TEST_UNSET_IN_ENV".into(), None),
        ],
        ..options()
    };
    let graph = plan_ok(dockerfile, &options);
    assert_eq!(graph.target_stage().config.labels["a"], "from-env");
    assert_eq!(graph.target_stage().config.labels["b"], "default");
}

#[test]
fn env_overrides_arg_of_the_same_name_whatever_the_order() {
    let dockerfile = "\
FROM busybox
ARG A=from-arg
ENV A=from-env
ENV B=$A
ENV C=from-env-c
ARG C=from-arg-c
ENV D=$C
RUN true
";
    let graph = plan_ok(dockerfile, &with_args(&[("A", "from-build-arg")]));
    let config = &graph.target_stage().config;
    assert_eq!(config.env_value("B"), Some("from-env"));
    assert_eq!(config.env_value("D"), Some("from-env-c"));
    let run = exec_ops(&graph)[0];
    assert!(run.env.contains(&"A=from-env".to_string()), "{:?}", run.env);
    assert!(
        run.env.contains(&"C=from-env-c".to_string()),
        "{:?}",
        run.env
    );
    // BuildKit records the env value for an ARG that ENV overrides.
    assert_eq!(
        history(&graph).last().unwrap(),
        "RUN |2 A=from-env C=from-env-c /bin/sh -c true # buildkit"
    );
}

#[test]
fn platform_args_are_global_and_need_declaring_in_a_stage() {
    let dockerfile = "\
FROM --platform=$BUILDPLATFORM busybox AS build
LABEL undeclared=\"[$TARGETARCH]\"
ARG TARGETPLATFORM TARGETOS TARGETARCH TARGETVARIANT BUILDARCH
LABEL target=$TARGETPLATFORM os=$TARGETOS arch=$TARGETARCH variant=\"[$TARGETVARIANT]\" build=$BUILDARCH
";
    let options = BuildOptions {
        platform: Some("linux/arm/v7".parse().unwrap()),
        ..options()
    };
    let graph = plan_ok(dockerfile, &options);
    let labels = &graph.target_stage().config.labels;
    assert_eq!(labels["undeclared"], "[]");
    assert_eq!(labels["target"], "linux/arm/v7");
    assert_eq!(labels["os"], "linux");
    assert_eq!(labels["arch"], "arm");
    assert_eq!(labels["variant"], "[v7]");
    assert_eq!(labels["build"], Platform::host().architecture);
    // FROM --platform=$BUILDPLATFORM resolves the image for the build platform.
    assert_eq!(graph.target_stage().platform, Platform::host());
    // Default target platform is the host's (linux/amd64 here).
    let graph = plan_ok(
        dockerfile,
        &BuildOptions {
            platform: None,
            ..options
        },
    );
    assert_eq!(
        graph.target_stage().config.labels["target"],
        Platform::host().to_string()
    );
}

#[test]
fn proxy_args_reach_run_but_not_history_or_cache_keys() {
    let dockerfile = "FROM busybox\nRUN wget example.com\n";
    let plain = plan_ok(dockerfile, &options());
    let proxied = plan_ok(
        dockerfile,
        &with_args(&[("HTTP_PROXY", "http://proxy:3128"), ("no_proxy", "local")]),
    );
    let run = exec_ops(&proxied)[0];
    assert_eq!(
        run.proxy_env,
        vec![
            ("HTTP_PROXY".to_string(), "http://proxy:3128".to_string()),
            ("no_proxy".to_string(), "local".to_string())
        ]
    );
    assert!(!run.env.iter().any(|e| e.contains("proxy")));
    assert_eq!(history(&proxied), history(&plain));
    assert_eq!(
        history(&proxied),
        vec!["RUN /bin/sh -c wget example.com # buildkit"]
    );
    assert_eq!(
        key_of(&plain, "RUN wget example.com"),
        key_of(&proxied, "RUN wget example.com")
    );
    assert!(
        proxied.warnings.is_empty(),
        "proxy args never warn: {:?}",
        proxied.warnings
    );
    // Declared with ARG, a proxy arg is an ordinary build arg: history and key.
    let declared = "FROM busybox\nARG HTTP_PROXY\nRUN wget example.com\n";
    let graph = plan_ok(declared, &with_args(&[("HTTP_PROXY", "http://proxy:3128")]));
    assert!(exec_ops(&graph)[0].proxy_env.is_empty());
    assert_eq!(
        history(&graph).last().unwrap(),
        "RUN |1 HTTP_PROXY=http://proxy:3128 /bin/sh -c wget example.com # buildkit"
    );
}

#[test]
fn onbuild_triggers_of_the_base_image_run_right_after_from() {
    let dockerfile = "FROM onbuild-base:1\nRUN echo own step\nONBUILD RUN echo later\n";
    check("onbuild", dockerfile, &options());
    let graph = plan_ok(dockerfile, &options());
    let descriptions: Vec<&str> = graph
        .chain(graph.target)
        .into_iter()
        .map(|id| graph.node(id).description.as_str())
        .collect();
    assert_eq!(
        descriptions,
        vec![
            "FROM docker.io/library/onbuild-base:1",
            "COPY . /src/",
            "RUN make -C $BASE",
            "RUN echo own step",
            "ONBUILD RUN echo later"
        ]
    );
    // Triggers are consumed; the stage's own ONBUILD is stored for its children.
    assert_eq!(
        graph.target_stage().config.on_build,
        vec!["RUN echo later".to_string()]
    );
    // A stage used as a base passes its triggers along too.
    let graph = plan_ok(
        "FROM busybox AS parent\nONBUILD ENV FROM_TRIGGER=1\nFROM parent\nRUN true\n",
        &options(),
    );
    assert_eq!(
        graph.target_stage().config.env_value("FROM_TRIGGER"),
        Some("1")
    );
    assert!(graph.target_stage().config.on_build.is_empty());
}

#[test]
fn shell_form_and_exec_form_with_shell() {
    let dockerfile = "\
FROM busybox
RUN echo default shell
SHELL [\"/bin/bash\", \"-eu\", \"-o\", \"pipefail\", \"-c\"]
RUN echo $HOME | cat
RUN [\"echo\", \"$HOME\"]
CMD echo cmd
ENTRYPOINT [\"/entry\"]
";
    let graph = plan_ok(dockerfile, &options());
    let runs = exec_ops(&graph);
    assert_eq!(runs[0].argv, vec!["/bin/sh", "-c", "echo default shell"]);
    assert_eq!(
        runs[1].argv,
        vec![
            "/bin/bash",
            "-eu",
            "-o",
            "pipefail",
            "-c",
            "echo $HOME | cat"
        ]
    );
    assert_eq!(runs[2].argv, vec!["echo", "$HOME"]);
    let config = &graph.target_stage().config;
    assert_eq!(
        config.cmd,
        Some(vec![
            "/bin/bash".into(),
            "-eu".into(),
            "-o".into(),
            "pipefail".into(),
            "-c".into(),
            "echo cmd".into()
        ])
    );
    // CMD set in this stage survives ENTRYPOINT.
    assert_eq!(config.entrypoint, Some(vec!["/entry".to_string()]));
    // ENTRYPOINT resets an inherited CMD.
    let graph = plan_ok("FROM busybox\nENTRYPOINT [\"/entry\"]\n", &options());
    assert_eq!(graph.target_stage().config.cmd, None);
}

#[test]
fn heredoc_run() {
    let dockerfile = "\
FROM busybox
RUN <<EOF
echo hello
echo world
EOF
RUN <<'SCRIPT'
#!/bin/sh
echo from a script
SCRIPT
RUN cat <<A > /a && cat <<-B > /b
a body
A
\tb body
\tB
";
    let graph = plan_ok(dockerfile, &options());
    check("heredoc_run", dockerfile, &options());
    let runs = exec_ops(&graph);
    assert_eq!(
        runs[0].argv,
        vec!["/bin/sh", "-c", "echo hello\necho world\n"]
    );
    assert_eq!(runs[1].argv, vec!["/bin/sh", "-c", "/dev/pipes/SCRIPT"]);
    assert_eq!(runs[1].files.len(), 1);
    assert_eq!(runs[1].files[0].path, "/dev/pipes/SCRIPT");
    assert_eq!(runs[1].files[0].contents, "#!/bin/sh\necho from a script\n");
    assert_eq!(runs[1].files[0].mode, 0o755);
    assert_eq!(
        runs[2].argv[2],
        "cat <<A > /a && cat <<-B > /b\na body\nA\n\tb body\nB"
    );
}

#[test]
fn expansion_in_the_instructions_docker_expands() {
    let dockerfile = "\
FROM busybox
ARG DIR=/srv PORTS=\"80 53/udp\" WHO=app SIG=SIGINT
ENV HOME_DIR=$DIR/home
LABEL dir=${DIR} literal='$DIR'
EXPOSE $PORTS 8080
VOLUME $DIR/data
USER $WHO:$WHO
WORKDIR $DIR
STOPSIGNAL $SIG
COPY --chown=$WHO src/$WHO.conf ./$WHO/
ADD --chmod=644 http://example.com/${WHO}.tgz $DIR/dl/
RUN echo $DIR
CMD echo $DIR
ENTRYPOINT [\"echo\", \"$DIR\"]
";
    let graph = plan_ok(dockerfile, &options());
    check("expansion", dockerfile, &options());
    let config = &graph.target_stage().config;
    assert_eq!(config.env_value("HOME_DIR"), Some("/srv/home"));
    assert_eq!(config.labels["dir"], "/srv");
    assert_eq!(config.labels["literal"], "$DIR");
    let ports: Vec<&str> = config.exposed_ports.iter().map(String::as_str).collect();
    assert_eq!(ports, vec!["53/udp", "80/tcp", "8080/tcp"]);
    assert!(config.volumes.contains("/srv/data"));
    assert_eq!(config.user, "app:app");
    assert_eq!(config.working_dir, "/srv");
    assert_eq!(config.stop_signal.as_deref(), Some("SIGINT"));
    let copies: Vec<&kiln::planner::CopyOp> = graph
        .nodes
        .iter()
        .filter_map(|node| match &node.op {
            Op::Copy(copy) => Some(copy),
            _ => None,
        })
        .collect();
    assert_eq!(copies[0].dest, "/srv/app/");
    assert_eq!(copies[0].chown.as_deref(), Some("app"));
    assert_eq!(
        copies[0].sources,
        vec![CopySource::Context {
            path: "src/app.conf".into(),
            extract_archive: false
        }]
    );
    assert_eq!(
        copies[1].sources,
        vec![CopySource::Url {
            url: "http://example.com/app.tgz".into(),
            extract_archive: false
        }]
    );
    assert_eq!(copies[1].dest, "/srv/dl/");
    // RUN, CMD and ENTRYPOINT are left to the shell / program.
    assert_eq!(exec_ops(&graph)[0].argv[2], "echo $DIR");
    assert_eq!(config.cmd.as_ref().unwrap()[2], "echo $DIR");
    assert_eq!(config.entrypoint.as_ref().unwrap()[1], "$DIR");
}

#[test]
fn created_by_and_empty_layer_flags() {
    let dockerfile = "\
FROM busybox
ARG VERSION=1.0
ENV A=b C=\"d e\"
LABEL org.example=x
WORKDIR /app
WORKDIR /
COPY file /dst
ADD a b ./
RUN echo hi
RUN [\"echo\", \"exec\"]
USER 1000
EXPOSE 80 443
VOLUME /data /cache
STOPSIGNAL SIGTERM
SHELL [\"/bin/sh\", \"-ec\"]
HEALTHCHECK --interval=5m --timeout=3s --retries=3 CMD curl -f http://localhost/ || exit 1
MAINTAINER someone@example.com
ONBUILD RUN echo child
ENTRYPOINT [\"/entry\", \"x\"]
CMD [\"sh\"]
";
    let graph = plan_ok(dockerfile, &options());
    assert_eq!(
        history(&graph),
        vec![
            "ARG VERSION=1.0 (empty)",
            "ENV A=b C=d e (empty)",
            "LABEL org.example=x (empty)",
            "WORKDIR /app",
            "WORKDIR / (empty)",
            "COPY file /dst # buildkit",
            "ADD a b ./ # buildkit",
            "RUN |1 VERSION=1.0 /bin/sh -c echo hi # buildkit",
            "RUN |1 VERSION=1.0 echo exec # buildkit",
            "USER 1000 (empty)",
            "EXPOSE map[443/tcp:{} 80/tcp:{}] (empty)",
            "VOLUME [/data /cache] (empty)",
            "STOPSIGNAL SIGTERM (empty)",
            "SHELL [/bin/sh -ec] (empty)",
            "HEALTHCHECK &{[\"CMD-SHELL\" \"curl -f http://localhost/ || exit 1\"] \"5m0s\" \"3s\" \"0s\" \"0s\" '\\x03'} (empty)",
            "MAINTAINER someone@example.com (empty)",
            "ENTRYPOINT [\"/entry\" \"x\"] (empty)",
            "CMD [\"sh\"] (empty)",
        ]
    );
    let config = &graph.target_stage().config;
    assert_eq!(config.author.as_deref(), Some("someone@example.com"));
    assert_eq!(config.on_build, vec!["RUN echo child".to_string()]);
    assert_eq!(config.healthcheck.as_ref().unwrap().retries, 3);
}

#[test]
fn a_run_key_changes_with_the_args_it_sees_only() {
    let dockerfile = "\
ARG GLOBAL=g
FROM busybox AS other
ARG OTHER=o
RUN echo other
FROM busybox
RUN echo before
ARG SEEN=s
RUN echo after
COPY --from=other /x /x
";
    let base = plan_ok(dockerfile, &options());
    let key = |graph: &BuildGraph, step: &str| key_of(graph, step);
    // Args the steps do not see: undeclared, global but not redeclared, declared later,
    // declared in another stage (only its COPY source changes).
    for args in [
        &[("UNDECLARED", "1")][..],
        &[("GLOBAL", "changed")],
        &[("SEEN", "changed")],
    ] {
        let changed = plan_ok(dockerfile, &with_args(args));
        assert_eq!(
            key(&base, "RUN echo before"),
            key(&changed, "RUN echo before"),
            "{args:?}"
        );
    }
    let other = plan_ok(dockerfile, &with_args(&[("OTHER", "changed")]));
    assert_eq!(key(&base, "RUN echo after"), key(&other, "RUN echo after"));
    assert_ne!(key(&base, "RUN echo other"), key(&other, "RUN echo other"));
    assert_ne!(
        key(&base, "COPY --from=other /x /x"),
        key(&other, "COPY --from=other /x /x")
    );
    // An arg the step sees changes its key.
    let seen = plan_ok(dockerfile, &with_args(&[("SEEN", "changed")]));
    assert_ne!(key(&base, "RUN echo after"), key(&seen, "RUN echo after"));
    let run = exec_ops(&seen)
        .into_iter()
        .find(|exec| exec.argv[2] == "echo after")
        .unwrap();
    assert_eq!(
        run.build_args,
        vec![("SEEN".to_string(), Some("changed".to_string()))]
    );
    assert!(run.env.contains(&"SEEN=changed".to_string()));
    // And the same plan twice gives the same keys.
    assert_eq!(keys(&base), keys(&plan_ok(dockerfile, &options())));
}

#[test]
fn errors_name_the_place() {
    let error = plan_err("FROM busybox\n  COPY ${X:?required} /\n", &options());
    assert_eq!(
        error,
        "Dockerfile:2:3: COPY: failed to process \"${X:?required}\": X: required"
    );
    let error = plan_err("FROM busybox\nCOPY a b /dst\n", &options());
    assert!(
        error.starts_with("Dockerfile:2:1: when using COPY with more than one source file"),
        "{error}"
    );
    let error = plan_err("FROM busybox\nCOPY http://example.com/a /dst\n", &options());
    assert_eq!(
        error,
        "Dockerfile:2:1: source can't be a URL for COPY: http://example.com/a"
    );
    let error = plan_err("FROM missing:1\n", &options());
    assert_eq!(
        error,
        "Dockerfile:1:1: failed to resolve image docker.io/library/missing:1 for linux/amd64: docker.io/library/missing:1: not found"
    );
    let error = plan_err(
        "FROM busybox AS a\nCOPY --from=b /x /x\nFROM busybox AS b\nCOPY --from=a /y /y\n",
        &BuildOptions {
            target: Some("a".into()),
            ..options()
        },
    );
    assert!(
        error.contains("circular dependency detected on stage a"),
        "{error}"
    );
    let error = plan_err("FROM busybox\nEXPOSE 80/foo\n", &options());
    assert_eq!(
        error,
        "Dockerfile:2:1: invalid port specification \"80/foo\""
    );
}

#[test]
fn ready_set_runs_independent_stages_in_parallel() {
    let dockerfile = "\
FROM alpine:3.19 AS a
RUN echo a
FROM busybox AS b
RUN echo b
FROM scratch
COPY --from=a /a /a
COPY --from=b /b /b
";
    let graph = plan_ok(dockerfile, &options());
    let order = graph.topological_order();
    assert_eq!(order.len(), graph.nodes.len());
    let position: BTreeMap<NodeId, usize> =
        order.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    for node in &graph.nodes {
        for input in &node.inputs {
            assert!(position[input] < position[&node.id]);
        }
    }
    let mut done = BTreeSet::new();
    let first = graph.ready(&done);
    assert_eq!(first.len(), 3, "three sources are ready at once: {first:?}");
    done.extend(first);
    let second = graph.ready(&done);
    let descriptions: Vec<&str> = second
        .iter()
        .map(|id| graph.node(*id).description.as_str())
        .collect();
    assert_eq!(descriptions, vec!["RUN echo a", "RUN echo b"]);
    assert_eq!(graph.dependents(second[0]).len(), 1);
}

#[test]
fn labels_and_no_cache_options() {
    let options = BuildOptions {
        labels: vec![("org.opencontainers.image.source".into(), "kiln".into())],
        no_cache: true,
        ..options()
    };
    let graph = plan_ok("FROM busybox AS a\nFROM a\nLABEL own=1\n", &options);
    assert!(graph.no_cache);
    assert_eq!(
        graph.target_stage().config.labels["org.opencontainers.image.source"],
        "kiln"
    );
    assert!(!graph
        .stage(0)
        .unwrap()
        .config
        .labels
        .contains_key("org.opencontainers.image.source"));
}
