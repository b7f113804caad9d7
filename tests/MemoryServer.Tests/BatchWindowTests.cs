using SEmigrate.Contracts.Paging;
using SEmigrate.MemoryServer.Client;

namespace SEmigrate.MemoryServer.Tests;

/// <summary>The sender's window: never more than its size awaiting confirms nor more than its bound
/// awaiting stores, buffers reused only after their confirm, and a failed batch stops the sender.</summary>
public class BatchWindowTests
{
    [Fact]
    public async Task Confirms_and_stores_are_each_bounded_and_every_batch_is_stored_once()
    {
        const int window = 3;
        var batchWindow = new BatchWindow(window, spare: 2, batchBytes: 4096);
        int confirming = 0, unstored = 0, mostConfirming = 0, mostUnstored = 0;
        var stored = new List<int>();
        var buffers = new HashSet<object>(ReferenceEqualityComparer.Instance);
        var gate = new object();
        var storesMayFinish = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        for (var i = 0; i < 60; i++)
        {
            var batch = await batchWindow.NextAsync(CancellationToken.None);
            Assert.Equal(0, batch.Count); // handed out empty
            buffers.Add(batch);
            batch.Advance(i + 1); // the batch's "content": its number
            batchWindow.Send(batch, async b =>
            {
                var length = b.Length; // read before the confirm: the buffer is reused after it
                lock (gate)
                {
                    mostConfirming = Math.Max(mostConfirming, ++confirming);
                    mostUnstored = Math.Max(mostUnstored, ++unstored);
                    if (unstored == window * BatchWindow.UnstoredPerWindow)
                    {
                        storesMayFinish.TrySetResult(); // no store finishes before the bound is reached
                    }
                }
                await Task.Delay(Random.Shared.Next(1, 3));
                lock (gate)
                {
                    confirming--;
                }
                return StoreAsync(length);
            }, CancellationToken.None);
        }
        await batchWindow.AllStoredAsync();

        Assert.InRange(mostConfirming, 1, window);
        Assert.Equal(window * BatchWindow.UnstoredPerWindow, mostUnstored); // reached while stores were held, never passed
        Assert.Equal(5, buffers.Count); // window + spare buffers, reused
        Assert.Equal(Enumerable.Range(1, 60).Select(i => PageFrame.HeaderSize + i), stored.Order());

        async Task StoreAsync(int length)
        {
            await storesMayFinish.Task;
            await Task.Delay(Random.Shared.Next(1, 3));
            lock (gate)
            {
                unstored--;
                stored.Add(length);
            }
        }
    }

    [Fact]
    public async Task A_failed_store_stops_the_sender_at_its_next_batch()
    {
        var window = new BatchWindow(window: 2, spare: 1, batchBytes: 4096);
        var sent = 0;
        var failure = await Assert.ThrowsAsync<InvalidOperationException>(async () =>
        {
            for (var i = 0; i < 1000; i++)
            {
                var batch = await window.NextAsync(CancellationToken.None);
                sent++;
                var n = i;
                window.Send(batch, async _ =>
                {
                    await Task.Yield();
                    return Stored(n);
                }, CancellationToken.None);
            }
        });
        Assert.Equal("store full at batch 3", failure.Message);
        Assert.InRange(sent, 4, 50); // stopped within a few windows of the failure, not after 1000 batches
        await Assert.ThrowsAsync<InvalidOperationException>(window.AllStoredAsync);

        static async Task Stored(int n)
        {
            await Task.Delay(1);
            if (n == 3)
            {
                throw new InvalidOperationException("store full at batch 3");
            }
        }
    }

    [Fact]
    public async Task A_refused_publish_stops_the_sender_and_frees_its_buffer()
    {
        var window = new BatchWindow(window: 1, spare: 0, batchBytes: 4096);
        var batch = await window.NextAsync(CancellationToken.None);
        window.Send(batch, _ => Task.FromException<Task>(new InvalidOperationException("no queue: host down")), CancellationToken.None);
        var failure = await Assert.ThrowsAsync<InvalidOperationException>(async () => await window.NextAsync(CancellationToken.None));
        Assert.Equal("no queue: host down", failure.Message);
    }
}
