"""The train state: a mid-epoch position moves to another number of processes by samples."""



def test_a_mid_epoch_position_converts_by_samples():
    from harness.checkpointing.state import TrainState

    state = TrainState(batch_in_epoch=7, num_processes=2)
    assert "the epoch continues after 14 of its 14 trained batches" in state.move_to(1)
    assert state.batch_in_epoch == 14 and state.num_processes == 1
    assert "(replaying 2)" in state.move_to(4)
    assert state.batch_in_epoch == 3  # 14 batches of one process = 3.5 of four: half a batch is replayed
    assert state.move_to(4) is None and state.batch_in_epoch == 3
    fresh = TrainState()
    assert fresh.move_to(2) is None and fresh.num_processes == 2 and fresh.batch_in_epoch == 0
