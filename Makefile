# Common commands. `make demo` and `make test` install what they need first.
.PHONY: setup demo test lint bench crd snapshots

setup:
	bash tools/setup.sh

demo:
	bash tools/setup.sh demo
	cargo build --release -q --workspace
	./target/release/testkit demo

test: setup
	cargo test --workspace --no-fail-fast

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

bench:
	bash tools/setup.sh demo
	cargo build --release -q --workspace
	./target/release/testkit bench

crd:
	cargo run -q -- crd tenantmigration > crds/tenantmigrations.yaml
	cargo run -q -- crd ragstack > crds/ragstacks.yaml
	cp crds/tenantmigrations.yaml crds/ragstacks.yaml deploy/crds/
	cp crds/tenantmigrations.yaml crds/ragstacks.yaml charts/tenant-migrator/crds/

snapshots: crd
	UPDATE_SNAPSHOTS=1 cargo test -q --test chart the_rendered_chart_matches_its_snapshots
