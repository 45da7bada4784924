//! Every integration suite in one test binary: the crate is linked once instead of once per file,
//! which on two cores was most of the test time. Each file is a module; `support` is shared.

mod support;

mod agent_streams;
mod agents;
mod aibot;
mod aibot_fake;
mod aibot_payloads;
mod aibot_process;
mod binary;
mod callback;
mod config;
mod crash;
mod crypto;
mod durable;
mod hardening;
mod hermes;
mod layers;
mod media;
mod message;
mod operator;
mod outbound;
mod postgres_harness;
mod readme;
mod replicas;
mod simulate;
mod store;
mod store_suite;
