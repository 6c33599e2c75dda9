//! The ops the planner hands the executor: COPY/ADD destinations and sources, RUN mounts,
//! network and security, and the cache-key contract (`Op::cache_key` with `ResolvedInputs`).

use kiln::cache::Parent;
use kiln::digest::Digest;
use kiln::planner::{
    plan, BaseImageResolver, BuildGraph, BuildOptions, CacheKeyError, CopyOp, CopySource, ExecOp,
    ImageConfig, MountKind, Network, Op, Platform, ResolveError, ResolvedImage, ResolvedInputs,
    Security,
};

struct OneImage;

impl BaseImageResolver for OneImage {
    fn resolve(
        &self,
        reference: &str,
        _platform: &Platform,
    ) -> Result<ResolvedImage, ResolveError> {
        if reference != "docker.io/library/busybox:latest" {
            return Err(format!("{reference}: not found").into());
        }
        Ok(ResolvedImage {
            digest: Digest::of_bytes(reference.as_bytes()),
            config: ImageConfig {
                env: vec!["PATH=/bin".into()],
                ..ImageConfig::default()
            },
        })
    }
}

fn plan_ok(dockerfile: &str, options: &BuildOptions) -> BuildGraph {
    let parsed = kiln::parser::parse(dockerfile, "Dockerfile").expect("test Dockerfile parses");
    plan(&parsed, options, &OneImage).unwrap_or_else(|error| panic!("plan failed: {error}"))
}

fn copies(graph: &BuildGraph) -> Vec<&CopyOp> {
    graph
        .nodes
        .iter()
        .filter_map(|node| match &node.op {
            Op::Copy(copy) => Some(copy),
            _ => None,
        })
        .collect()
}

fn execs(graph: &BuildGraph) -> Vec<&ExecOp> {
    graph
        .nodes
        .iter()
        .filter_map(|node| match &node.op {
            Op::Exec(exec) => Some(exec),
            _ => None,
        })
        .collect()
}

#[test]
fn copy_destinations_follow_dockers_trailing_slash_rules() {
    let dockerfile = "\
FROM busybox
COPY a /abs/file
COPY a /abs/dir/
COPY a rel
WORKDIR /app
COPY a rel
COPY a .
COPY a sub/
COPY a b ./
COPY a ../up/./x
COPY a /
";
    let graph = plan_ok(dockerfile, &BuildOptions::default());
    let dests: Vec<&str> = copies(&graph)
        .iter()
        .map(|copy| copy.dest.as_str())
        .collect();
    assert_eq!(
        dests,
        vec![
            "/abs/file",
            "/abs/dir/",
            "/rel",
            "/app/rel",
            "/app/",
            "/app/sub/",
            "/app/",
            "/up/x",
            "/"
        ]
    );
}

#[test]
fn copy_heredocs_are_expanded_unless_quoted() {
    let dockerfile = "\
FROM busybox
ARG NAME=world
COPY <<EOF /hello.txt
hello \"$NAME\" \\$NAME
EOF
COPY <<'EOF' /literal.txt
hello $NAME
EOF
COPY <<-EOF <<EOT /multi/
\ttabbed $NAME
\tEOF
second
EOT
";
    let graph = plan_ok(dockerfile, &BuildOptions::default());
    let copies = copies(&graph);
    assert_eq!(
        copies[0].sources,
        vec![CopySource::Heredoc {
            name: "EOF".into(),
            contents: "hello \"world\" $NAME\n".into()
        }]
    );
    assert_eq!(
        copies[1].sources,
        vec![CopySource::Heredoc {
            name: "EOF".into(),
            contents: "hello $NAME\n".into()
        }]
    );
    assert_eq!(
        copies[2].sources,
        vec![
            CopySource::Heredoc {
                name: "EOF".into(),
                contents: "tabbed world\n".into()
            },
            CopySource::Heredoc {
                name: "EOT".into(),
                contents: "second\n".into()
            },
        ]
    );
    let history: Vec<&str> = graph
        .nodes
        .iter()
        .filter_map(|node| node.history.as_ref())
        .map(|entry| entry.created_by.as_str())
        .collect();
    assert!(
        history.contains(&"COPY <<EOF /hello.txt # buildkit"),
        "{history:?}"
    );
    assert!(
        history.contains(&"COPY <<EOF <<EOT /multi/ # buildkit"),
        "{history:?}"
    );
}

#[test]
fn add_extracts_local_archives_but_not_urls_and_keeps_its_flags() {
    let dockerfile = "\
FROM busybox
ADD rootfs.tar.gz /
ADD https://example.com/x.tar.gz /dl/
ADD --unpack=true https://example.com/y.tar.gz /dl/
ADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d https://example.com/z /z
ADD --keep-git-dir=true https://github.com/moby/buildkit.git#v0.10.1 /buildkit
COPY --link --parents --exclude=*.tmp --chmod=0755 src/ /dst/
";
    let graph = plan_ok(dockerfile, &BuildOptions::default());
    let copies = copies(&graph);
    assert_eq!(
        copies[0].sources,
        vec![CopySource::Context {
            path: "rootfs.tar.gz".into(),
            extract_archive: true
        }]
    );
    assert_eq!(
        copies[1].sources,
        vec![CopySource::Url {
            url: "https://example.com/x.tar.gz".into(),
            extract_archive: false
        }]
    );
    assert_eq!(
        copies[2].sources,
        vec![CopySource::Url {
            url: "https://example.com/y.tar.gz".into(),
            extract_archive: true
        }]
    );
    assert_eq!(
        copies[3].checksum.as_deref(),
        Some("sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d")
    );
    assert!(copies[4].keep_git_dir);
    assert!(copies[5].link && copies[5].parents && !copies[5].add);
    assert_eq!(copies[5].exclude, vec!["*.tmp".to_string()]);
    assert_eq!(copies[5].chmod.as_deref(), Some("0755"));
}

#[test]
fn run_mounts_network_and_security() {
    let dockerfile = "\
FROM busybox AS builder
RUN echo build > /out
FROM busybox
ARG CACHE=/root/.cache
WORKDIR /work
RUN --mount=type=cache,target=$CACHE,sharing=locked --mount=type=bind,from=builder,source=/out,target=in \\
    --mount=type=tmpfs,target=/tmp --mount=type=secret,id=token --network=none --security=insecure cat in
RUN true
";
    let graph = plan_ok(
        dockerfile,
        &BuildOptions {
            network: Network::Host,
            ..BuildOptions::default()
        },
    );
    let runs = execs(&graph);
    let run = runs.iter().find(|exec| exec.argv[2] == "cat in").unwrap();
    assert_eq!(run.network, Network::None);
    assert_eq!(run.security, Security::Insecure);
    assert_eq!(run.mounts.len(), 4);
    let cache = &run.mounts[0];
    assert_eq!(
        (cache.kind, cache.target.as_str(), cache.id.as_deref()),
        (MountKind::Cache, "/root/.cache", Some("/root/.cache"))
    );
    assert!(!cache.readonly);
    let bind = &run.mounts[1];
    assert_eq!(
        (bind.kind, bind.target.as_str(), bind.source.as_deref()),
        (MountKind::Bind, "/work/in", Some("/out"))
    );
    assert!(bind.readonly);
    assert_eq!(bind.from, Some(graph.stage(0).unwrap().last));
    let secret = &run.mounts[3];
    assert_eq!(
        (secret.kind, secret.target.as_str(), secret.id.as_deref()),
        (MountKind::Secret, "/run/secrets/token", Some("token"))
    );
    // The mounted stage is an input of the RUN node, so it is built first.
    let node = graph
        .nodes
        .iter()
        .find(|node| node.description.ends_with("cat in"))
        .unwrap();
    assert!(node.inputs.contains(&graph.stage(0).unwrap().last));
    // A RUN without --network gets the build's default.
    assert_eq!(runs.last().unwrap().network, Network::Host);
}

#[test]
fn cache_keys_need_the_inputs_the_planner_cannot_know() {
    let graph = plan_ok(
        "FROM busybox AS a\nFROM busybox\nCOPY ctx /ctx\nCOPY --from=a /x /x\n",
        &BuildOptions::default(),
    );
    let copy_node = graph
        .nodes
        .iter()
        .find(|node| node.description == "COPY ctx /ctx")
        .unwrap();
    let parent_key = graph
        .node(copy_node.parent.unwrap())
        .op
        .cache_key(Parent::Scratch, &ResolvedInputs::default())
        .unwrap();
    let missing = copy_node
        .op
        .cache_key(Parent::Step(&parent_key), &ResolvedInputs::default());
    assert!(
        matches!(
            missing,
            Err(CacheKeyError::MissingSourceDigest { index: 0, .. })
        ),
        "{missing:?}"
    );
    let key = |content: &[u8]| {
        let inputs = ResolvedInputs {
            source_digests: vec![Some(Digest::of_bytes(content))],
            ..Default::default()
        };
        copy_node
            .op
            .cache_key(Parent::Step(&parent_key), &inputs)
            .unwrap()
    };
    assert_eq!(key(b"one"), key(b"one"));
    assert_ne!(
        key(b"one"),
        key(b"two"),
        "changed context content changes the key"
    );
    let from_node = graph
        .nodes
        .iter()
        .find(|node| node.description == "COPY --from=a /x /x")
        .unwrap();
    let missing = from_node
        .op
        .cache_key(Parent::Step(&parent_key), &ResolvedInputs::default());
    assert!(
        matches!(missing, Err(CacheKeyError::MissingNodeKey { .. })),
        "{missing:?}"
    );
}

#[test]
fn escape_directive_changes_the_expansion_escape() {
    let dockerfile = "# escape=`\nFROM busybox\nARG V=x\nLABEL a=`$V b=\\$V\n";
    let graph = plan_ok(dockerfile, &BuildOptions::default());
    let labels = &graph.target_stage().config.labels;
    assert_eq!(labels["a"], "$V");
    assert_eq!(labels["b"], "\\x");
}

#[test]
fn run_mount_from_an_image_and_from_cycles() {
    let graph = plan_ok(
        "FROM scratch\nRUN --mount=type=bind,from=busybox,target=/bb /bb/bin/sh -c true\n",
        &BuildOptions::default(),
    );
    let run = execs(&graph)[0];
    let from = run.mounts[0].from.expect("mount reads the image");
    assert!(matches!(
        graph.node(from).op,
        Op::Source(kiln::planner::SourceOp::Image { .. })
    ));
    let parsed = kiln::parser::parse(
        "FROM b AS a\nRUN true\nFROM a AS b\nRUN true\n",
        "Dockerfile",
    )
    .unwrap();
    let error = plan(&parsed, &BuildOptions::default(), &OneImage)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("circular dependency detected on stage b"),
        "{error}"
    );
}
