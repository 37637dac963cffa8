from mpistage.staging.topology import host_sort_key


def test_hosts_sort_naturally() -> None:
    hosts = ["cn10", "cn2", "cn1", "gpu-a3", "gpu-a10", "cn2b", "login"]
    assert sorted(hosts, key=host_sort_key) == ["cn1", "cn2", "cn2b", "cn10", "gpu-a3",
                                                "gpu-a10", "login"]
