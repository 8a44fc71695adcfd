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

install: all
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(BINS) $(DESTDIR)$(PREFIX)/bin/

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
