using SEmigrate.MemoryServer.Client;

namespace SEmigrate.MemoryServer.Tests;

/// <summary>The sender's window: never more than its size in flight, buffers reused only after their
/// store finished, and a failed store stops the sender at its next batch.</summary>
public class BatchWindowTests
{
    [Fact]
    public async Task At_most_the_window_is_in_flight_and_every_batch_is_stored_once()
    {
        var window = new BatchWindow(window: 3, spare: 2, batchBytes: 4096);
        var inFlight = 0;
        var most = 0;
        var stored = new List<int>();
        var buffers = new HashSet<object>(ReferenceEqualityComparer.Instance);
        for (var i = 0; i < 40; i++)
        {
            var batch = await window.NextAsync(CancellationToken.None);
            Assert.Equal(0, batch.Count); // handed out empty
            buffers.Add(batch);
            batch.Advance(i + 1); // the batch's "content": its number
            window.Send(batch, async b =>
            {
                var now = Interlocked.Increment(ref inFlight);
                lock (stored)
                {
                    most = Math.Max(most, now);
                }
                await Task.Delay(Random.Shared.Next(1, 5));
                lock (stored)
                {
                    stored.Add(b.Length);
                }
                Interlocked.Decrement(ref inFlight);
            }, CancellationToken.None);
        }
        await window.AllStoredAsync();

        Assert.InRange(most, 1, 3);
        Assert.Equal(5, buffers.Count); // window + spare buffers, reused
        var header = Contracts.Paging.PageFrame.HeaderSize;
        Assert.Equal(Enumerable.Range(1, 40).Select(i => header + i), stored.Order());
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
                    if (n == 3)
                    {
                        throw new InvalidOperationException("store full at batch 3");
                    }
                }, CancellationToken.None);
            }
        });
        Assert.Equal("store full at batch 3", failure.Message);
        Assert.InRange(sent, 4, 8); // stopped within a window or two of the failure, not after 1000
        await Assert.ThrowsAsync<InvalidOperationException>(window.AllStoredAsync);
    }
}
