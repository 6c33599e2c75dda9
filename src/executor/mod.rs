//! Runs processes in real Linux containers (namespaces, overlayfs, pivot_root) and whole
//! `BuildGraph`s (`build`). Never sees Dockerfile syntax.

pub mod build;
pub mod container;
