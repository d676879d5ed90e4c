# sipcraft — see README.md. `make run` runs the server; `make test` runs every test.
CARGO ?= cargo
PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: build run test test-deps lint check-windows clean install dist deb docker

VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -n 1)
# The binary that `install` and `deb` ship. The default is built (release) when it is missing
# and used as it is otherwise: run `make build` first after changing the source.
BIN ?= target/release/sipcraft
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
# systemd reads units from both /usr/local/lib/systemd/system and /usr/lib/systemd/system.
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
# Where `dist` and `deb` put what they make.
DISTDIR ?= target/dist
DOCKER ?= docker

build:
	$(CARGO) build --release --locked

run: build
	mkdir -p run
	./target/release/sipcraft run -c examples/sipcraft.toml

# Installs what the tests need when it is missing (apt-get, as root), then runs everything.
test-deps:
	@bash scripts/test-deps.sh

test: test-deps lint
	$(CARGO) test --workspace --locked

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

check-windows:
	rustup target add x86_64-pc-windows-gnu
	@# ring (rustls) compiles C even for `cargo check`: it needs the MinGW cross compiler.
	@command -v x86_64-w64-mingw32-gcc >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-mingw-w64-x86-64 >/dev/null; }
	$(CARGO) check --workspace --target x86_64-pc-windows-gnu --locked

clean:
	$(CARGO) clean

target/release/sipcraft:
	$(CARGO) build --release --locked

# The binary, man page, systemd unit and sysusers entry under PREFIX; the configuration in
# /etc/sipcraft (kept when it exists); state and runtime directories. Installing for real
# (no DESTDIR, as root) also creates the sipcraft user and hands it those directories.
install: $(BIN)
	install -D -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/sipcraft
	install -D -m 0644 docs/sipcraft.1 $(DESTDIR)$(MANDIR)/man1/sipcraft.1
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	sed 's|/usr/bin/sipcraft|$(BINDIR)/sipcraft|g' systemd/sipcraft.service \
		> $(DESTDIR)$(UNITDIR)/sipcraft.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/sipcraft.service
	install -D -m 0644 systemd/sipcraft.sysusers $(DESTDIR)$(SYSUSERSDIR)/sipcraft.conf
	install -d -m 0755 $(DESTDIR)/etc/sipcraft
	@if [ -e $(DESTDIR)/etc/sipcraft/sipcraft.toml ]; then \
		echo "keeping $(DESTDIR)/etc/sipcraft/sipcraft.toml (the new default is packaging/sipcraft.toml)"; \
	else \
		echo "install -m 0640 packaging/sipcraft.toml $(DESTDIR)/etc/sipcraft/sipcraft.toml"; \
		install -m 0640 packaging/sipcraft.toml $(DESTDIR)/etc/sipcraft/sipcraft.toml; \
	fi
	install -d -m 0750 $(DESTDIR)/var/lib/sipcraft
	install -d -m 0700 $(DESTDIR)/run/sipcraft
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ]; then \
		sh packaging/create-user.sh "$(DESTDIR)$(SYSUSERSDIR)/sipcraft.conf" && \
		chown sipcraft:sipcraft /var/lib/sipcraft /run/sipcraft && \
		chgrp sipcraft /etc/sipcraft/sipcraft.toml && \
		if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi && \
		echo "installed; edit /etc/sipcraft/sipcraft.toml, then: systemctl enable --now sipcraft"; \
	fi

# sipcraft-VERSION.tar.gz: the source with every crate vendored; builds offline.
dist:
	bash packaging/dist.sh "$(VERSION)" "$(DISTDIR)"

# sipcraft_VERSION-1_ARCH.deb from a staged tree, with dpkg-deb (needs dpkg-dev).
deb: $(BIN)
	bash packaging/deb.sh "$(BIN)" "$(VERSION)" "$(DISTDIR)"

# The container image (Dockerfile); needs a Docker engine.
docker:
	$(DOCKER) build -t sipcraft:$(VERSION) -t sipcraft:latest .

# sipcraft against Kamailio on loopback, same run, same SIPp scenarios; writes BENCHMARKS.md
# (bench/README.md). Installs what it needs (apt-get, as root). About 9 minutes once built;
# never part of `make test`.
.PHONY: bench
bench:
	@bash bench/deps.sh
	$(CARGO) build --release --locked
	python3 bench/run.py --bin target/release/sipcraft --out BENCHMARKS.md
