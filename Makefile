# Common commands. `make demo` and `make test` install what they need first.
.PHONY: setup demo test lint bench crd snapshots

setup:
	bash tools/setup.sh

demo:
	bash tools/setup.sh demo
	cargo build --release -q --workspace
	./target/release/testkit demo

test: setup
	cargo test --workspace

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

bench:
	bash tools/setup.sh demo
	cargo build --release -q --workspace
	./target/release/testkit bench

crd:
	cargo run -q -- crd > crds/tenantmigrations.yaml
	cp crds/tenantmigrations.yaml deploy/crds/tenantmigrations.yaml
	cp crds/tenantmigrations.yaml charts/tenant-migrator/crds/tenantmigrations.yaml

snapshots: crd
	UPDATE_SNAPSHOTS=1 cargo test -q --test chart the_rendered_chart_matches_its_snapshots
