"""nmtq.env and `nmtq env`: CPU flags from sample /proc/cpuinfo texts, versions against importlib.metadata."""

import importlib.metadata
import json
import os
import platform

import pytest
import torch

import nmtq
from nmtq.cli import main
from nmtq.ct2_int8 import int8_saturates_here
from nmtq.env import describe_environment, environment, format_environment, parse_cpuinfo

# the first lines of two processors of /proc/cpuinfo on a Zen 3 EPYC (AVX2, no AVX-512, no VNNI) and on an Ice Lake
# Xeon (AVX-512 with VNNI)
EPYC_FLAGS = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht "
              "syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid extd_apicid "
              "tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c "
              "rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext "
              "invpcid_single ssbd ibrs ibpb stibp vmmcall fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid "
              "rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 clzero xsaveerptr arat npt nrip_save "
              "umip vaes vpclmulqdq rdpid fsrm")
XEON_FLAGS = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht "
              "syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid aperfmperf "
              "tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer "
              "aes xsave avx f16c rdrand hypervisor lahf_lm abm 3dnowprefetch invpcid_single ssbd ibrs ibpb stibp "
              "ibrs_enhanced fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid avx512f avx512dq rdseed adx smap "
              "avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves wbnoinvd "
              "ida arat avx512vbmi pku ospke avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg tme "
              "avx512_vpopcntdq rdpid md_clear flush_l1d arch_capabilities")


def cpuinfo(vendor: str, model: str, flags: str) -> str:
    block = (f"vendor_id\t: {vendor}\ncpu family\t: 6\nmodel\t\t: 106\nmodel name\t: {model}\nstepping\t: 6\n"
             f"cpu MHz\t\t: 2899.998\ncache size\t: 55296 KB\nfpu\t\t: yes\nflags\t\t: {flags}\nbogomips\t: 5799.99\n")
    return f"processor\t: 0\n{block}\nprocessor\t: 1\n{block}\n"


EPYC = cpuinfo("AuthenticAMD", "AMD EPYC 7B13 64-Core Processor", EPYC_FLAGS)
XEON = cpuinfo("GenuineIntel", "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", XEON_FLAGS)
ARM = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32\nCPU part\t: 0xd0c\n"
PACKAGES = ["torch", "transformers", "datasets", "accelerate", "sacrebleu", "sentencepiece", "ctranslate2",
            "safetensors"]
KEYS = ["nmtq", "python", "platform", *PACKAGES, "cpu", "cpu_vendor", "avx2", "avx512", "vnni", "cpu_count",
        "torch_threads", "gpu", "gpu_count", "cuda"]


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("text, model, vendor, avx2, avx512, vnni", [
    (EPYC, "AMD EPYC 7B13 64-Core Processor", "AuthenticAMD", True, False, False),
    (XEON, "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "GenuineIntel", True, True, True),
    ("vendor_id\t: GenuineIntel\nflags\t\t: sse2 avx avx2 avx_vnni\n", None, "GenuineIntel", True, False, True),
    (ARM, None, None, False, False, False),
    ("", None, None, False, False, False),
])
def test_cpu_flags_from_cpuinfo(text, model, vendor, avx2, avx512, vnni):
    cpu = parse_cpuinfo(text)
    assert (cpu.model, cpu.vendor, cpu.avx2, cpu.avx512, cpu.vnni) == (model, vendor, avx2, avx512, vnni)


def test_ct2_reads_the_same_flags(monkeypatch):
    monkeypatch.delenv("CT2_USE_MKL", raising=False)
    assert int8_saturates_here(EPYC) is True  # oneDNN without VNNI: pairs of products summed in 16 bits
    assert int8_saturates_here(XEON) is False


def test_environment_of_an_epyc_without_a_gpu(no_gpu, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    env = environment(EPYC)
    assert list(env) == KEYS
    assert {k: env[k] for k in ("cpu", "cpu_vendor", "avx2", "avx512", "vnni", "torch_threads", "gpu", "gpu_count")} \
        == {"cpu": "AMD EPYC 7B13 64-Core Processor", "cpu_vendor": "AuthenticAMD", "avx2": True, "avx512": False,
            "vnni": False, "torch_threads": 3, "gpu": "none", "gpu_count": 0}
    assert env["cpu_count"] == os.cpu_count() and env["cuda"] == (torch.version.cuda or "none")
    v = importlib.metadata.version
    assert describe_environment(env) == (f"AMD EPYC 7B13 64-Core Processor (AVX2, no AVX-512, no VNNI), 3 threads, "
                                         f"torch {v('torch')}, transformers {v('transformers')}, ctranslate2 "
                                         f"{v('ctranslate2')}")
    assert json.loads(json.dumps(env)) == env  # JSON-native: a metrics.json reads back the same


def test_versions_are_importlib_metadata_s(monkeypatch):
    env = environment(XEON)
    assert {k: env[k] for k in ["nmtq", *PACKAGES]} == {k: importlib.metadata.version(k) for k in ["nmtq", *PACKAGES]}
    assert env["python"] == platform.python_version() and env["platform"] == platform.platform()
    real = importlib.metadata.version

    def version(name: str) -> str:
        if name in ("ctranslate2", "nmtq"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    env = environment(XEON)
    assert env["ctranslate2"] == "not installed" and env["torch"] == real("torch")
    assert env["nmtq"] == nmtq.__version__  # a checkout run without installing it


def test_gpus_and_a_cpu_without_model_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "NVIDIA H200")
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(platform, "processor", lambda: "aarch64")
    env = environment(ARM)
    assert (env["gpu"], env["gpu_count"], env["cuda"]) == ("NVIDIA H200, NVIDIA H200", 2, "12.4")
    assert (env["cpu"], env["cpu_vendor"], env["avx2"], env["avx512"], env["vnni"]) == (
        "aarch64", "unknown", False, False, False)
    assert describe_environment(env).startswith("NVIDIA H200, NVIDIA H200 (CUDA 12.4) and aarch64 (no AVX2, no "
                                                "AVX-512, no VNNI), ")


def expected_xeon() -> dict:
    v = importlib.metadata.version
    return {"nmtq": v("nmtq"), "python": platform.python_version(), "platform": platform.platform(),
            **{p: v(p) for p in PACKAGES}, "cpu": "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz",
            "cpu_vendor": "GenuineIntel", "avx2": True, "avx512": True, "vnni": True, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "gpu": "none", "gpu_count": 0,
            "cuda": torch.version.cuda or "none"}


@pytest.fixture
def xeon(tmp_path, monkeypatch, no_gpu):
    path = tmp_path / "cpuinfo"
    path.write_text(XEON)
    monkeypatch.setattr("nmtq.env.CPUINFO", path)


def test_nmtq_env_prints_key_value_lines(xeon, capsys):
    assert main(["env"]) == 0
    expected = expected_xeon()
    yes_no = {True: "yes", False: "no"}
    lines = [f"- {k}: {yes_no[v] if isinstance(v, bool) else v}" for k, v in expected.items()]
    printed = capsys.readouterr().out
    assert printed == "\n".join(lines) + "\n"
    assert ("- cpu: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz\n- cpu_vendor: GenuineIntel\n- avx2: yes\n"
            "- avx512: yes\n- vnni: yes\n") in printed


def test_nmtq_env_json(xeon, capsys):
    assert main(["env", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == expected_xeon() and list(printed) == KEYS


def test_format_environment():
    assert format_environment({"torch": "2.5.1", "avx2": True, "vnni": False, "cpu_count": 16}) == (
        "- torch: 2.5.1\n- avx2: yes\n- vnni: no\n- cpu_count: 16")
