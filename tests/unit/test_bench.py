"""tools/bench.py without sockets: measurement loops, optional zring APIs, tables."""

from __future__ import annotations

import asyncio
import sys
import time
from types import SimpleNamespace

import pytest

import zring
from zring.localcluster import load_tool

bench = load_tool("bench")


def args_for(*argv: str):
    return bench.build_parser().parse_args(list(argv))


def finished(name: str, ops: int, elapsed_s: float, latencies_ms: list[float], batch: int = 1,
             errors: int = 0, misses: int = 0):
    return bench.Result(name, ops=ops, errors=errors, misses=misses, elapsed_s=elapsed_s,
                        latencies_ns=[int(ms * 1e6) for ms in latencies_ms], batch=batch)


# ---------------------------------------------------------------------- measurement

def test_result_counts_keys_per_second_and_nearest_rank_percentiles():
    result = finished("x", ops=10, elapsed_s=2.0, latencies_ms=[float(i) for i in range(1, 101)],
                      batch=100)
    assert result.ops_per_s == 500.0
    assert result.percentile_ms(0.50) == 50.0
    assert result.percentile_ms(0.99) == 99.0
    assert bench.Result("empty").ops_per_s == 0.0
    assert bench.Result("empty").percentile_ms(0.5) != bench.Result("empty").percentile_ms(0.5)


def test_run_workload_counts_misses_errors_and_batch_hits():
    def op(i: int) -> bool:
        if i == 3:
            raise ValueError("boom")
        return i % 2 == 0

    result = bench.run_workload("single", op, 10, max_seconds=60)
    assert (result.ops, result.errors, result.misses) == (9, 1, 4)  # odd i but 3: 1, 5, 7, 9
    assert len(result.latencies_ns) == 9
    assert result.first_error == "ValueError: boom"

    batched = bench.run_workload("batch", lambda c: 97, 5, max_seconds=60, batch=100)
    assert (batched.ops, batched.misses) == (5, 15)
    assert batched.ops_per_s == pytest.approx(500 / batched.elapsed_s)


def test_run_workload_stops_at_max_seconds(capsys):
    result = bench.run_workload("slow", lambda i: True, 1000, max_seconds=0)
    assert result.ops == 1
    assert "stopped after 1 calls" in capsys.readouterr().out


def test_run_async_workload_keeps_concurrency_in_flight_and_runs_every_index_once():
    seen: list[int] = []
    state = {"now": 0, "peak": 0}

    async def op(i: int) -> bool:
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        state["now"] -= 1
        seen.append(i)
        if i == 7:
            raise KeyError("seven")
        return i != 8

    result = asyncio.run(bench.run_async_workload("a", op, 500, 100, max_seconds=60))
    assert sorted(seen) == list(range(500))
    assert state["peak"] == 100
    assert (result.ops, result.errors, result.misses) == (499, 1, 1)
    assert len(result.latencies_ns) == 499
    assert result.first_error.startswith("KeyError")


def test_run_async_workload_with_fewer_ops_than_workers():
    async def op(i: int) -> bool:
        return True

    result = asyncio.run(bench.run_async_workload("a", op, 3, 100, max_seconds=60))
    assert result.ops == 3 and result.errors == 0


def test_run_async_workload_cancels_calls_that_never_return(capsys):
    async def hang(i: int) -> bool:
        await asyncio.Event().wait()
        return True

    began = time.monotonic()
    result = asyncio.run(bench.run_async_workload("hung", hang, 1000, 10, max_seconds=0,
                                                  grace_s=0.05))
    assert time.monotonic() - began < 5
    assert (result.ops, result.errors) == (0, 10)
    assert "unfinished" in result.first_error


def test_key_batches_are_distinct_and_cover_the_ops():
    batches = bench.key_batches("p", 250, 100)
    assert [len(b) for b in batches] == [100, 100, 100]
    flat = [key for b in batches for key in b]
    assert len(set(flat)) == 300 and flat[0] == "p:00000000"
    assert len(bench.key_batches("p", 1, 100)) == 1


def test_parse_vm_rss():
    text = "Name:\tpython\nVmPeak:\t  300000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n"
    assert bench.parse_vm_rss(text) == 12345 * 1024
    assert bench.parse_vm_rss("Name:\tkthreadd\n") is None


# ---------------------------------------------------------------------- options

def test_parse_workloads():
    assert bench.parse_workloads(bench.DEFAULT_WORKLOADS) == {"sync", "async", "batch", "echo",
                                                              "etcd"}
    assert bench.parse_workloads("sync,etcd") == {"sync", "etcd"}
    assert bench.parse_workloads(" Sync , batch ") == {"sync", "batch"}
    assert bench.parse_workloads("all") == set(bench.WORKLOADS)
    with pytest.raises(ValueError, match="unknown bogus"):
        bench.parse_workloads("sync,bogus")
    with pytest.raises(ValueError):
        bench.parse_workloads(" , ")


def test_main_rejects_bad_options(capsys):
    assert bench.main(["--workloads", "nope"]) == 2
    assert bench.main(["--concurrency", "0"]) == 2
    assert bench.main(["--start-cluster", "--seeds", "tcp://127.0.0.1:1"]) == 2
    assert "error" in capsys.readouterr().err


# ---------------------------------------------------------------------- optional zring APIs

def test_async_client_class_missing_gives_a_note(monkeypatch):
    monkeypatch.delattr(zring, "AsyncClient", raising=False)
    monkeypatch.delitem(zring._LAZY, "AsyncClient", raising=False)
    monkeypatch.setitem(sys.modules, "zring.aio", None)  # import zring.aio -> not found
    cls, why = bench.async_client_class()
    assert cls is None and "not available" in why


def test_async_client_class_present(monkeypatch):
    class Fake:
        pass

    monkeypatch.setattr(zring, "AsyncClient", Fake, raising=False)
    assert bench.async_client_class() == (Fake, "")


class FakeBatchClient:
    def __init__(self, short: bool = False) -> None:
        self.store: dict[str, bytes] = {}
        self.short = short

    def mput(self, items):
        pairs = list(items.items()) if isinstance(items, dict) else list(items)
        self.store.update(pairs)
        return [SimpleNamespace(success=True) for _ in pairs]

    def mget(self, keys, r=None):
        replies = [SimpleNamespace(found=key in self.store, value=self.store.get(key))
                   for key in keys]
        return replies[:-1] if self.short else replies


def test_zring_batch_counts_keys_and_per_call_latency():
    args = args_for("--ops", "250", "--batch", "100")
    results = bench.bench_zring_batch(FakeBatchClient(), args, b"v", "p")
    assert set(results) == {"mput", "mget", "mget_r1"}
    for result in results.values():
        assert (result.ops, result.batch, result.errors, result.misses) == (3, 100, 0, 0)
        assert len(result.latencies_ns) == 3


def test_zring_batch_without_mget_is_a_note():
    client = SimpleNamespace(mput=lambda items: [])
    note = bench.bench_zring_batch(client, args_for(), b"v", "p")
    assert note == "zring.Client.mget not available in this zring (yet)"


def test_zring_batch_with_a_wrong_reply_count_fails_the_warm_up():
    note = bench.bench_zring_batch(FakeBatchClient(short=True), args_for(), b"v", "p")
    assert "warm-up failed" in note and "99 replies for 100 keys" in note


class FakeAsyncClient:
    instances: list[FakeAsyncClient] = []

    def __init__(self, seeds, timeout=5.0, retries=3, fail=False):
        self.seeds, self.timeout, self.fail = seeds, timeout, fail
        self.store: dict[str, bytes] = {}
        self.in_flight = self.peak = 0
        self.closed = False
        FakeAsyncClient.instances.append(self)

    async def _tick(self) -> None:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await asyncio.sleep(0)
        self.in_flight -= 1
        if self.fail:
            raise RuntimeError("no cluster")

    async def put(self, key, value, w=None):
        await self._tick()
        self.store[key] = value
        return SimpleNamespace(success=True)

    async def get(self, key, r=None):
        await self._tick()
        return SimpleNamespace(found=key in self.store, value=self.store.get(key))

    async def close(self) -> None:
        self.closed = True


def test_zring_async_runs_put_then_get_with_concurrency_in_flight():
    FakeAsyncClient.instances.clear()
    args = args_for("--ops", "300", "--concurrency", "50", "--timeout", "2")
    results = asyncio.run(bench.bench_zring_async(FakeAsyncClient, "tcp://127.0.0.1:1", args,
                                                  b"v", "p"))
    client = FakeAsyncClient.instances[-1]
    assert client.closed and client.timeout == 2.0
    assert client.peak == 50
    assert (results["aput"].ops, results["aget"].ops) == (300, 300)
    assert results["aget"].misses == 0


def test_zring_async_warm_up_failure_is_a_note_and_closes():
    FakeAsyncClient.instances.clear()

    def failing(seeds, timeout=5.0):
        return FakeAsyncClient(seeds, timeout, fail=True)

    note = asyncio.run(bench.bench_zring_async(failing, "s", args_for(), b"v", "p"))
    assert note == "AsyncClient warm-up failed: RuntimeError: no cluster"
    assert FakeAsyncClient.instances[-1].closed


# ---------------------------------------------------------------------- tables

def test_table_shows_ratios_and_dashes_for_skipped_zring_rows():
    zring_results = {
        "put": finished("zring put", 100, 1.0, [2.0] * 100),
        "get": finished("zring get", 200, 1.0, [1.0] * 200),
        "get_r1": finished("zring get r=1", 200, 1.0, [1.0] * 200),
        "mput": finished("zring mput", 10, 1.0, [5.0] * 10, batch=100),
        "mget": finished("zring mget", 8, 1.0, [4.0] * 8, batch=100, misses=3),
    }
    redis_get = finished("redis GET", 1000, 1.0, [0.5] * 1000)
    redis_results = {
        "put": finished("redis SET", 1000, 1.0, [0.5] * 1000), "get": redis_get,
        "get_r1": redis_get,
        "aput": finished("redis async SET", 500, 1.0, [10.0] * 500),
        "aget": finished("redis async GET", 500, 1.0, [10.0] * 500),
        "mput": finished("redis pipe SET", 10, 1.0, [1.0] * 10, batch=100),
        "mget": finished("redis pipe GET", 10, 1.0, [1.0] * 10, batch=100),
    }
    text = bench.format_table(zring_results, redis_results, {"w": 2, "r": 2},
                              {"sync", "async", "batch"})
    lines = {label: line[len(label):].split() for line in text.splitlines()
             for label in [line.split("  ")[0]]}
    assert lines["put W=2"][-5:] == ["0.10x", "4.00x", "4.00x", "0/0", "0/0"]
    assert lines["get R=1"][0] == "200"
    assert lines["mget 100 R=2"][-5:] == ["0.80x", "4.00x", "4.00x", "0/0", "3/0"]
    assert lines["async 100 get R=2"][:3] == ["-", "-", "-"]
    assert lines["async 100 get R=2"][-5:] == ["-", "-", "-", "-/0", "-/0"]
    assert sum(1 for line in text.splitlines() if set(line) <= {"-", " "}) == 3  # header, 2 rules

    only_sync = bench.format_table(zring_results, None, {"w": 2, "r": 2}, {"sync"})
    assert "async" not in only_sync and "redis" not in only_sync
    assert len(only_sync.splitlines()) == 5


def test_echo_table_sets_the_echo_against_redis_and_zring_against_the_echo():
    echo = {"echo": finished("pyzmq echo", 500, 1.0, [0.2] * 500),
            "echo_window": finished("pyzmq echo 100 in flight", 5000, 1.0, [2.0] * 5000),
            "relay": finished("pyzmq relay + echo", 200, 1.0, [0.5] * 200)}
    zring_results = {"get_r1": finished("zring get r=1", 250, 1.0, [0.4] * 250),
                     "aget": finished("zring async get", 1000, 1.0, [10.0] * 1000),
                     "get": finished("zring get", 100, 1.0, [1.0] * 100),
                     "put": finished("zring put", 50, 1.0, [2.0] * 50)}
    redis_results = {"get": finished("redis GET", 1000, 1.0, [0.1] * 1000),
                     "put": finished("redis SET", 800, 1.0, [0.1] * 800),
                     "aget": finished("redis async GET", 10000, 1.0, [1.0] * 10000)}
    lines = bench.format_echo_table(echo, zring_results, redis_results, 100).splitlines()
    assert lines[2].split()[-5:] == ["500", "0.200", "0.200", "0.50x", "0.50x"]
    assert lines[3].split()[-5:] == ["5,000", "2.000", "2.000", "0.50x", "0.20x"]
    assert lines[4].split()[-5:] == ["200", "0.500", "0.500", "0.20x", "0.50x"]   # R=2
    assert lines[5].split()[-5:] == ["200", "0.500", "0.500", "0.25x", "0.25x"]   # W=2
    without = bench.format_echo_table(echo, {}, None, 100).splitlines()
    assert without[2].split()[-2:] == ["-", "-"]


def test_rounds_summary_gives_median_and_range_of_each_ratio():
    zring_round = {"get_r1": finished("zring get r=1", 100, 1.0, [1.0] * 100),
                   "mget": finished("zring mget", 5, 1.0, [1.0] * 5, batch=100)}
    redis_round = {"get_r1": finished("redis GET", 400, 1.0, [1.0] * 400),
                   "mget": finished("redis pipe GET", 10, 1.0, [1.0] * 10, batch=100),
                   "put": finished("redis SET", 10, 1.0, [1.0] * 10)}
    assert bench.round_ratios(zring_round, redis_round) == {"get_r1": 0.25, "mget": 0.5}
    ratios = {"get_r1": [0.25, 0.5, 0.2], "mget": [0.5]}
    text = bench.format_ratio_summary(ratios, {"w": 2, "r": 2}, {"sync", "batch"})
    lines = {line.split("  ")[0]: line.split() for line in text.splitlines()[2:]}
    assert lines["get R=1"][-4:] == ["3", "0.25x", "0.20x", "0.50x"]
    assert lines["mget 100 R=2"][-4:] == ["1", "0.50x", "0.50x", "0.50x"]
    assert "put W=2" not in lines


def test_table_notes_name_each_skipped_group_once():
    notes = {"aput": "no AsyncClient", "aget": "no AsyncClient", "mput": "no mput"}
    lines = bench.table_notes(notes, {"sync", "async", "batch"}, 100, 100)
    assert lines[:2] == ["note: async rows: zring side skipped: no AsyncClient",
                         "note: batch rows: zring side skipped: no mput"]
    assert not any("async 100" in line for line in bench.table_notes({}, {"sync"}, 100, 100))


def test_memory_table_ratio_to_redis():
    mib = bench.MIB
    rows = [bench.MemoryRow("zring node1", 1_000_000, 300 * mib, 100 * mib, "pid 1",
                            rss_writes=320 * mib),
            bench.MemoryRow("zring node2", 1_000_000, None, None),
            bench.MemoryRow("redis-server", 1_000_000, 150 * mib, 8 * mib, "pid 3")]
    text = bench.format_memory_table(rows)
    lines = text.splitlines()
    assert lines[2].split()[:7] == ["zring", "node1", "1,000,000", "300.0", "100.0", "320.0",
                                    "2.00x"]
    assert lines[3].split()[3:7] == ["-", "-", "-", "-"]
    assert lines[4].split()[:5] == ["redis-server", "1,000,000", "150.0", "8.0", "-"]


def test_cpu_steal_reads_the_all_cpus_line_and_the_note_gives_its_share():
    text = ("cpu  100 5 50 800 10 0 5 30 7 0\n"
            "cpu0 50 2 25 400 5 0 2 15 0 0\nintr 12345\n")
    assert bench.parse_cpu_steal(text) == (30, 1000)   # guest time is in user time already
    assert bench.parse_cpu_steal("intr 1\n") is None
    assert bench.parse_cpu_steal("cpu  1 2 3 4\n") is None   # a kernel without steal
    note = bench.steal_note((30, 1000), (130, 2000))
    assert "10%" in note and "unsteady" in note
    assert "unsteady" not in bench.steal_note((30, 1000), (40, 2000))   # 1%
    assert bench.steal_note(None, (130, 2000)) is None
    assert bench.steal_note((30, 1000), (30, 1000)) is None



# ---------------------------------------------------------------------- etcd

def test_etcd_is_a_workload_that_implies_zrings_sync_rows():
    assert "etcd" in bench.WORKLOADS
    assert bench.zring_workloads({"etcd"}) == {"sync"}
    assert bench.zring_workloads({"async", "etcd", "echo"}) == {"async", "sync", "echo"}
    assert bench.zring_workloads({"batch"}) == {"batch"}
    assert args_for("--no-etcd").no_etcd and not args_for().no_etcd


def test_etcd_members_form_one_loopback_cluster():
    cluster = bench.etcd_initial_cluster(["member1", "member2"], [2380, 2390])
    assert cluster == "member1=http://127.0.0.1:2380,member2=http://127.0.0.1:2390"
    command = bench.etcd_member_command("/usr/bin/etcd", "member2", "/tmp/x/member2", 2389,
                                        2390, cluster, "tok")
    flags = dict(zip(command[1::2], command[2::2]))
    assert command[0] == "/usr/bin/etcd"
    assert flags["--name"] == "member2" and flags["--data-dir"] == "/tmp/x/member2"
    assert flags["--listen-client-urls"] == flags["--advertise-client-urls"] \
        == "http://127.0.0.1:2389"
    assert flags["--listen-peer-urls"] == flags["--initial-advertise-peer-urls"] \
        == "http://127.0.0.1:2390"
    assert flags["--initial-cluster"] == cluster
    assert flags["--initial-cluster-state"] == "new"
    assert all("127.0.0.1" in v for k, v in flags.items() if k.endswith("-urls"))


def test_etcd_availability_and_its_skip_line():
    assert bench.etcd_availability({"sync"}, False, "/usr/bin/etcd", "") == (False, None)
    assert bench.etcd_availability({"etcd"}, True, None, "") == (False, None)
    assert bench.etcd_availability({"etcd"}, False, "/usr/bin/etcd", "") == (True, None)
    assert bench.etcd_availability({"etcd"}, False, None, "") == (
        False, "etcd: skipped: etcd not found on PATH (apt-get install -y etcd-server)")
    assert bench.etcd_availability({"etcd"}, False, "/usr/bin/etcd", "no client") == (
        False, "etcd: skipped: no client")


def test_etcd_setup_says_one_line_when_etcd_is_absent(monkeypatch, capsys):
    monkeypatch.setattr(bench.shutil, "which", lambda name: None)
    assert bench.etcd_setup({"sync", "etcd"}, no_etcd=False) == (None, None)
    assert capsys.readouterr().out == ("etcd: skipped: etcd not found on PATH "
                                       "(apt-get install -y etcd-server)\n")
    assert bench.etcd_setup({"sync", "etcd"}, no_etcd=True) == (None, None)
    assert bench.etcd_setup({"sync"}, no_etcd=False) == (None, None)
    assert capsys.readouterr().out == ""


def test_etcd_setup_without_the_client(monkeypatch, capsys):
    monkeypatch.setenv("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")  # restored after
    monkeypatch.setattr(bench.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setitem(sys.modules, "etcd3", None)  # import etcd3 -> ImportError
    assert bench.etcd_setup({"etcd"}, no_etcd=False) == (None, None)
    assert capsys.readouterr().out == ("etcd: skipped: the etcd3 client is not installed "
                                       "(pip install -e '.[peers]')\n")


def test_import_etcd3_names_a_broken_client(monkeypatch):
    monkeypatch.setenv("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
    real = bench.importlib.import_module

    def import_module(name, *rest):
        if name == "etcd3":
            raise TypeError("Descriptors cannot be created directly.\nIf this call came ...")
        return real(name, *rest)

    monkeypatch.setattr(bench.importlib, "import_module", import_module)
    assert bench.import_etcd3() == (None, "the etcd3 client failed to import (TypeError: "
                                          "Descriptors cannot be created directly.)")


class FakeEtcdFuture:
    def __init__(self, result):
        self._result = result

    def add_done_callback(self, callback):
        callback(self)  # at once, in this thread (gRPC would call from its own)

    def cancelled(self):
        return False

    def exception(self):
        return self._result if isinstance(self._result, Exception) else None

    def result(self):
        return self._result


class FakeEtcdClient:
    """etcd3.client's surface that bench uses: put, get(serializable=), close, and the KV
    stub's futures."""

    def __init__(self, host, port, timeout):
        self.host, self.port, self.timeout = host, port, timeout
        self.store: dict[bytes, bytes] = {}
        self.serializable_gets = 0
        self.closed = False
        self.metadata = None
        self.kvstub = SimpleNamespace(Put=SimpleNamespace(future=self._put_future),
                                      Range=SimpleNamespace(future=self._range_future))

    @staticmethod
    def _bytes(key):
        return key if isinstance(key, bytes) else key.encode()

    def put(self, key, value):
        self.store[self._bytes(key)] = value
        return SimpleNamespace(header=1)

    def get(self, key, serializable=False):
        self.serializable_gets += serializable
        return self.store.get(self._bytes(key)), None

    def close(self):
        self.closed = True

    def _put_future(self, request, timeout, metadata=None):
        self.store[request.key] = request.value
        return FakeEtcdFuture(SimpleNamespace())

    def _range_future(self, request, timeout, metadata=None):
        if request.key.endswith(b"00000007"):
            return FakeEtcdFuture(RuntimeError("deadline exceeded"))
        return FakeEtcdFuture(SimpleNamespace(count=int(request.key in self.store)))


def fake_etcd3():
    made: list[FakeEtcdClient] = []

    def client(host, port, timeout):
        made.append(FakeEtcdClient(host, port, timeout))
        return made[-1]

    etcdrpc = SimpleNamespace(PutRequest=lambda key, value: SimpleNamespace(key=key, value=value),
                              RangeRequest=lambda key: SimpleNamespace(key=key))
    return SimpleNamespace(client=client, etcdrpc=etcdrpc), made


def test_bench_etcd_runs_the_sync_rows_on_the_given_member():
    etcd3, made = fake_etcd3()
    results = bench.bench_etcd(etcd3, 2379, {"sync"}, args_for("--ops", "50"), b"v", "p")
    client = made[-1]
    assert (client.host, client.port, client.closed) == ("127.0.0.1", 2379, True)
    assert set(results) == {"put", "get", "get_r1"}
    assert [results[k].ops for k in ("put", "get", "get_r1")] == [50, 50, 50]
    assert all(r.misses == 0 and r.errors == 0 for r in results.values())
    assert client.serializable_gets == 50


def test_bench_etcd_async_bridges_grpc_futures_to_asyncio():
    etcd3, made = fake_etcd3()
    args = args_for("--ops", "40", "--concurrency", "8")
    results = bench.bench_etcd(etcd3, 2379, {"sync", "async"}, args, b"v", "p")
    assert (results["aput"].ops, results["aput"].errors) == (40, 0)
    assert (results["aget"].ops, results["aget"].errors, results["aget"].misses) == (39, 1, 0)
    assert "deadline exceeded" in results["aget"].first_error


def test_etcd_table_sets_zring_against_etcd():
    zring_results = {"put": finished("zring put", 300, 1.0, [2.0] * 300),
                     "get": finished("zring get", 400, 1.0, [1.0] * 400),
                     "get_r1": finished("zring get r=1", 600, 1.0, [1.0] * 600),
                     "mput": finished("zring mput", 10, 1.0, [5.0] * 10, batch=100)}
    etcd_results = {"put": finished("etcd put", 100, 1.0, [4.0] * 100),
                    "get": finished("etcd get", 200, 1.0, [0.5] * 200, misses=2),
                    "get_r1": finished("etcd get serializable", 300, 1.0, [0.25] * 300),
                    "aget": finished("etcd async get", 500, 1.0, [8.0] * 500)}
    text = bench.format_table(zring_results, etcd_results, {"w": 2, "r": 2},
                              {"sync", "async"}, peer="etcd", rows=bench.ETCD_ROWS)
    header, *_ = text.splitlines()
    assert header.split()[7:14] == ["etcd", "ops/s", "p50", "ms", "p99", "ms", "ops/s"]
    assert "ops/s z/e" in header and "p99 z/e" in header and "z/r" not in header
    lines = {label: line[len(label):].split() for line in text.splitlines()
             for label in [line.split("  ")[0]]}
    assert lines["put W=2"][3] == "put" and lines["put W=2"][-5:] == [
        "3.00x", "0.50x", "0.50x", "0/0", "0/0"]
    assert lines["get R=2"][3:5] == ["get", "lin."]
    assert lines["get R=2"][-5:] == ["2.00x", "2.00x", "2.00x", "0/0", "0/2"]
    assert lines["get R=1"][3:5] == ["get", "ser."] and lines["get R=1"][-5] == "2.00x"
    assert lines["async 100 put W=2"][-5:] == ["-", "-", "-", "-/-", "-/-"]
    assert lines["async 100 get R=2"][-5:] == ["-", "-", "-", "-/0", "-/0"]
    assert "mput" not in text
    only_sync = bench.format_table(zring_results, etcd_results, {"w": 2, "r": 2}, {"sync"},
                                   peer="etcd", rows=bench.ETCD_ROWS)
    assert "async" not in only_sync and len(only_sync.splitlines()) == 5


def test_etcd_rounds_summary_and_notes():
    text = bench.format_ratio_summary({"put": [1.5, 2.0, 1.7]}, {"w": 2, "r": 2}, {"sync"},
                                      peer="etcd", rows=bench.ETCD_ROWS)
    assert "z/e median" in text.splitlines()[0]
    assert text.splitlines()[2].split()[-4:] == ["3", "1.70x", "1.50x", "2.00x"]
    notes = bench.etcd_table_notes({"sync"}, 100)
    assert notes[0].startswith("z/e: zring divided by etcd")
    assert not any("in flight" in line for line in notes)
    assert "no asyncio API" in bench.etcd_table_notes({"sync", "async"}, 100)[-1]
