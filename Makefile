# sipcraft — see README.md. `make run` runs the server; `make test` runs every test.
CARGO ?= cargo
PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: build run test test-deps lint check-windows clean

build:
	$(CARGO) build --release --locked

run: build
	mkdir -p run
	./target/release/sipcraft run -c examples/sipcraft.toml

# Installs what the tests need when it is missing (apt-get, as root), then runs everything.
test-deps:
	@bash scripts/test-deps.sh

test: test-deps
	$(CARGO) test --workspace --locked

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

check-windows:
	rustup target add x86_64-pc-windows-gnu
	$(CARGO) check --workspace --target x86_64-pc-windows-gnu --locked

clean:
	$(CARGO) clean
