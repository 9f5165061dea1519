import threading

from moefast._util.parallel import per_core


def test_results_in_order_and_one_item_in_this_thread():
    assert per_core(lambda x: x * x, range(50)) == [x * x for x in range(50)]
    assert per_core(lambda x: x, []) == []
    here = threading.get_ident()
    assert per_core(lambda _: threading.get_ident(), ["only"]) == [here]
