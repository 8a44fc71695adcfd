# moeshard: one Makefile for everything.
#   make deps    install the Debian packages the project needs (as root)
#   make         build build/bin/moeshard, build/bin/expertd and the tools
#   make test    run every test (CUnit suites, then integration and reference checks)
#   make demo    deps + build + tiny demo model + text generation, end to end
#   make bench   performance figures on a large generated model (outside the tree)
#   V=1          show the commands

CC       ?= cc
PROTOC_C ?= protoc-c
BUILD    ?= build
PREFIX   ?= /usr/local
DESTDIR  ?=

PKGS     := libzmq libprotobuf-c liburing openssl libpcre2-8 libmicrohttpd jansson libsystemd
CFLAGS_BASE := -std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror -fno-strict-aliasing \
               -MMD -MP -iquote common -iquote coordinator -I$(BUILD)/gen
CFLAGS   ?=
ALL_CFLAGS = $(CFLAGS_BASE) $(CFLAGS) $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDFLAGS  ?=
LDLIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm -lpthread

# Per-file ISA flags: the SIMD paths are compiled for their ISA and only
# called after a run-time CPU check.
AVX2_FLAGS   := -mavx2 -mfma -mf16c
AVX512_FLAGS := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mfma -mf16c -mavx2

ifeq ($(V),1)
Q :=
else
Q := @
endif

COMMON_SRC := $(wildcard common/*.c)
COORD_SRC  := $(filter-out coordinator/main.c,$(wildcard coordinator/*.c))
EXPERTD_SRC := $(wildcard expertd/*.c)
TOOL_SRC   := $(wildcard tools/*.c)
TEST_SRC   := $(wildcard tests/test_*.c)
BENCH_SRC  := $(wildcard bench/*.c)
# protobuf-c code is generated into the build folder, never committed.
PROTO_SRC  := $(wildcard proto/*.proto)
GEN_C      := $(patsubst proto/%.proto,$(BUILD)/gen/%.pb-c.c,$(PROTO_SRC))
GEN_H      := $(GEN_C:.c=.h)
GEN_OBJ    := $(patsubst $(BUILD)/gen/%.c,$(BUILD)/obj/gen/%.o,$(GEN_C))

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))

COMMON_LIB := $(BUILD)/lib/libmscommon.a
COORD_LIB  := $(BUILD)/lib/libmscoord.a
BINS := $(BUILD)/bin/moeshard
ifneq ($(EXPERTD_SRC),)
BINS += $(BUILD)/bin/expertd
endif
TOOLS := $(patsubst tools/%.c,$(BUILD)/bin/%,$(TOOL_SRC))
BENCHES := $(patsubst bench/%.c,$(BUILD)/bin/%,$(BENCH_SRC))
TESTS := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))

.PHONY: all deps test demo bench install clean tests-build
# keep the objects of tools, benches and tests (they are intermediate to make)
.SECONDARY:
all: $(BINS) $(TOOLS) $(BENCHES)

$(BUILD)/obj/%_avx2.o: %_avx2.c | $(GEN_H)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(ALL_CFLAGS) $(AVX2_FLAGS) -c $< -o $@

$(BUILD)/obj/%_avx512.o: %_avx512.c | $(GEN_H)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(ALL_CFLAGS) $(AVX512_FLAGS) -c $< -o $@

$(BUILD)/obj/%.o: %.c | $(GEN_H)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(ALL_CFLAGS) -c $< -o $@

# Sources include the generated headers, so they exist before anything compiles
# (order-only: a changed .proto rebuilds its includers through the .d files).
$(BUILD)/gen/%.pb-c.c $(BUILD)/gen/%.pb-c.h: proto/%.proto
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  PROTOC  $<")
	$(Q)$(PROTOC_C) --proto_path=proto --c_out=$(BUILD)/gen $<

$(BUILD)/obj/gen/%.o: $(BUILD)/gen/%.c $(GEN_H)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(ALL_CFLAGS) -c $< -o $@

$(COMMON_LIB): $(call obj,$(COMMON_SRC)) $(GEN_OBJ)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  AR      $@")
	$(Q)rm -f $@ && ar rcs $@ $^

$(COORD_LIB): $(call obj,$(COORD_SRC))
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  AR      $@")
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/bin/moeshard: $(call obj,coordinator/main.c) $(COORD_LIB) $(COMMON_LIB)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/bin/expertd: $(call obj,$(EXPERTD_SRC)) $(COMMON_LIB)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/bin/%: $(BUILD)/obj/tools/%.o $(COMMON_LIB)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/bin/%: $(BUILD)/obj/bench/%.o $(COMMON_LIB)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(COORD_LIB) $(COMMON_LIB)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $^ $(LDLIBS) -lcunit -o $@

tests-build: all $(TESTS)

test: tests-build
	$(Q)BUILD=$(BUILD) bash tests/run.sh

DEB_PKGS := build-essential pkg-config libzmq3-dev libprotobuf-c-dev protobuf-c-compiler \
            liburing-dev libssl-dev libcunit1-dev libpcre2-dev libmicrohttpd-dev libjansson-dev \
            libsystemd-dev python3 python3-numpy curl iproute2 procps openssl \
            clang libclang-rt-dev valgrind systemd tcpdump
deps:
	@if [ "$$(id -u)" != 0 ]; then echo "make deps: run as root (it installs Debian packages with apt-get)" >&2; exit 1; fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEB_PKGS)

demo: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)BUILD=$(BUILD) bash tools/demo.sh

bench: all
	$(Q)BUILD=$(BUILD) bash bench/bench.sh

# ---- Hostile input (docs/testing.md): make fuzz, make asan, fuzz replays ----
# make fuzz   each fuzz/fuzz_*.c built with clang -fsanitize=fuzzer,address,undefined
#             into $(BUILD)/fuzz and run FUZZ_SECONDS (default 60) from its corpus
#             by fuzz/run.sh; fails on any crash and prints the reproducer's path.
# make asan   every test built with -fsanitize=address,undefined into $(ASAN_BUILD)
#             and run by tests/run.sh; any sanitizer report fails its test.
# make test   also builds $(BUILD)/fuzz-replay/fuzz_*: the same targets compiled
#             normally, which test_fuzz_regress.sh runs over fuzz/regress and fuzz/corpus.
.PHONY: fuzz asan
FUZZ_CC      ?= $(shell command -v clang-14 >/dev/null 2>&1 && echo clang-14 || echo clang)
FUZZ_SECONDS ?= 60
FUZZ_DIR     := $(BUILD)/fuzz
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
# clang-14 does not know __builtin_cpu_supports("f16c"): the kernel dispatcher is
# compiled by $(CC) without instrumentation (it only picks the SIMD path).
FUZZ_PLAIN_SRC := common/kernels.c
FUZZ_LIB_SRC := $(filter-out $(FUZZ_PLAIN_SRC),$(COMMON_SRC) $(COORD_SRC)) expertd/config.c
FUZZ_LIB     := $(FUZZ_DIR)/lib/libmsfuzz.a
FUZZ_NAMES   := $(patsubst fuzz/%.c,%,$(wildcard fuzz/fuzz_*.c))
FUZZ_BINS    := $(addprefix $(FUZZ_DIR)/bin/,$(FUZZ_NAMES))
FUZZ_REPLAYS := $(addprefix $(BUILD)/fuzz-replay/,$(FUZZ_NAMES))
ASAN_BUILD   ?= build-asan
ASAN_FLAGS   := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer

$(FUZZ_DIR)/obj/%_avx2.o: %_avx2.c | $(GEN_H)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  FUZZCC  $<")
	$(Q)$(FUZZ_CC) $(ALL_CFLAGS) $(AVX2_FLAGS) $(FUZZ_SAN) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_DIR)/obj/%_avx512.o: %_avx512.c | $(GEN_H)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  FUZZCC  $<")
	$(Q)$(FUZZ_CC) $(ALL_CFLAGS) $(AVX512_FLAGS) $(FUZZ_SAN) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_DIR)/obj/common/kernels.o: common/kernels.c | $(GEN_H)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(ALL_CFLAGS) -c $< -o $@

$(FUZZ_DIR)/obj/gen/%.o: $(BUILD)/gen/%.c $(GEN_H)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  FUZZCC  $<")
	$(Q)$(FUZZ_CC) $(ALL_CFLAGS) $(FUZZ_SAN) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_DIR)/obj/%.o: %.c | $(GEN_H)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  FUZZCC  $<")
	$(Q)$(FUZZ_CC) $(ALL_CFLAGS) $(FUZZ_SAN) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_LIB): $(patsubst %.c,$(FUZZ_DIR)/obj/%.o,$(FUZZ_LIB_SRC) $(FUZZ_PLAIN_SRC)) \
             $(patsubst $(BUILD)/gen/%.c,$(FUZZ_DIR)/obj/gen/%.o,$(GEN_C))
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  AR      $@")
	$(Q)rm -f $@ && ar rcs $@ $^

$(FUZZ_DIR)/bin/%: $(FUZZ_DIR)/obj/fuzz/%.o $(FUZZ_LIB)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer $^ $(LDLIBS) -o $@

fuzz: $(FUZZ_BINS) $(BUILD)/bin/genmodel $(BUILD)/bin/wireprobe
	$(Q)BUILD=$(BUILD) FUZZ_DIR=$(FUZZ_DIR) FUZZ_SECONDS=$(FUZZ_SECONDS) bash fuzz/run.sh $(FUZZ_NAMES)

tests-build: $(FUZZ_REPLAYS)

$(BUILD)/fuzz-replay/%: $(BUILD)/obj/fuzz/%.o $(BUILD)/obj/fuzz/replay.o $(BUILD)/obj/expertd/config.o \
                        $(COORD_LIB) $(COMMON_LIB)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

asan:
	$(Q)$(MAKE) --no-print-directory BUILD=$(ASAN_BUILD) CFLAGS="$(ASAN_FLAGS)" LDFLAGS="$(ASAN_FLAGS)" tests-build
	$(Q)MS_ASAN=1 ASAN_OPTIONS=halt_on_error=1:abort_on_error=0:detect_leaks=1:print_stacktrace=1:exitcode=86 \
	    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:exitcode=86 \
	    LSAN_OPTIONS=exitcode=86 BUILD=$(ASAN_BUILD) bash tests/run.sh

-include $(shell find $(FUZZ_DIR)/obj -name '*.d' 2>/dev/null)

# Binaries; systemd units (ExecStart and docs under $(PREFIX)); the
# sysusers entry; the docs; the example configs in /etc/moeshard, never
# overwriting an operator's: a newer example then lands beside it as .example.
install: all
	$(Q)install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/systemd/system $(DESTDIR)$(PREFIX)/lib/sysusers.d \
		$(DESTDIR)$(PREFIX)/share/doc/moeshard $(DESTDIR)/etc/moeshard
	$(Q)install -m 0755 $(BINS) $(DESTDIR)$(PREFIX)/bin/
	$(Q)for u in deploy/*.service; do \
		sed 's|/usr/local/|$(PREFIX)/|g' $$u >$(DESTDIR)$(PREFIX)/lib/systemd/system/$${u#deploy/} && \
		chmod 0644 $(DESTDIR)$(PREFIX)/lib/systemd/system/$${u#deploy/} || exit 1; \
	done
	$(Q)install -m 0644 deploy/moeshard.sysusers $(DESTDIR)$(PREFIX)/lib/sysusers.d/moeshard.conf
	$(Q)install -m 0644 README.md docs/*.md $(DESTDIR)$(PREFIX)/share/doc/moeshard/
	$(Q)for c in expertd coordinator; do \
		if cmp -s deploy/$$c.conf $(DESTDIR)/etc/moeshard/$$c.conf; then :; \
		elif [ -e $(DESTDIR)/etc/moeshard/$$c.conf ]; then \
			install -m 0644 deploy/$$c.conf $(DESTDIR)/etc/moeshard/$$c.conf.example || exit 1; \
			echo "kept $(DESTDIR)/etc/moeshard/$$c.conf; the new example is $$c.conf.example beside it"; \
		else \
			install -m 0644 deploy/$$c.conf $(DESTDIR)/etc/moeshard/$$c.conf || exit 1; \
		fi; \
	done

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
