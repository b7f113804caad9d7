using System.Threading.Channels;
using SEmigrate.Contracts.Paging;

namespace SEmigrate.MemoryServer.Client;

/// <summary>The sender's side of a bulk store. Flow control is by the broker's confirms, as with plain
/// publishing: at most <c>window</c> batches awaiting their confirm, and <c>spare</c> more buffers so
/// that the next batches are encoded (sealed) meanwhile; a buffer is reused once the broker has
/// confirmed its batch. Whether a batch is stored is the memory server's ack, which comes later: at
/// most <see cref="UnstoredPerWindow"/> windows of batches may wait for it, which bounds what queues at
/// the broker. The first failed batch stops the sender at its next batch, instead of after it has
/// encoded everything else; sends still in flight then finish on their own.</summary>
public sealed class BatchWindow
{
    /// <summary>The source's transfer (and the bench's default): 8 batches of 1 MiB in flight, 2 sealed ahead.</summary>
    public const int DefaultWindow = 8;
    public const int DefaultSpare = 2;
    public const int DefaultBatchBytes = 1 << 20;

    /// <summary>Batches sent but not yet stored, in windows: 4 x 8 x 1 MiB = 32 MiB at most per destination.</summary>
    public const int UnstoredPerWindow = 4;

    private readonly Channel<PageBatch> free;
    private readonly SemaphoreSlim confirming;
    private readonly SemaphoreSlim unstored;
    private readonly List<Task> inFlight = [];
    private readonly int size;

    public BatchWindow(int window, int spare, int batchBytes)
    {
        size = window;
        confirming = new SemaphoreSlim(window, window);
        unstored = new SemaphoreSlim(window * UnstoredPerWindow, window * UnstoredPerWindow);
        free = Channel.CreateBounded<PageBatch>(window + spare);
        for (var i = 0; i < window + spare; i++)
        {
            free.Writer.TryWrite(new PageBatch(batchBytes));
        }
    }

    /// <summary>An empty buffer to fill; waits while every buffer is in flight or waiting to go, and
    /// throws the first failed batch's exception.</summary>
    public async ValueTask<PageBatch> NextAsync(CancellationToken ct)
    {
        ThrowIfFailed();
        var batch = await free.Reader.ReadAsync(ct);
        ThrowIfFailed();
        batch.Clear();
        return batch;
    }

    /// <summary>Sends a filled batch once the window has room. <paramref name="send"/> returns when the
    /// broker has confirmed the batch (its buffer is free again then, whatever the outcome), yielding
    /// the task that completes when the batch is stored.</summary>
    public void Send(PageBatch batch, Func<PageBatch, Task<Task>> send, CancellationToken ct)
    {
        if (inFlight.Count > 4 * size * UnstoredPerWindow)
        {
            inFlight.RemoveAll(t => t.IsCompletedSuccessfully); // a long transfer keeps only what is pending
        }
        inFlight.Add(SendAsync(batch, send, ct));
    }

    private async Task SendAsync(PageBatch batch, Func<PageBatch, Task<Task>> send, CancellationToken ct)
    {
        Task stored;
        try
        {
            await unstored.WaitAsync(ct);
            try
            {
                await confirming.WaitAsync(ct);
                try
                {
                    stored = await send(batch);
                }
                finally
                {
                    confirming.Release();
                }
            }
            catch
            {
                unstored.Release();
                throw;
            }
        }
        finally
        {
            free.Writer.TryWrite(batch);
        }
        try
        {
            await stored;
        }
        finally
        {
            unstored.Release();
        }
    }

    /// <summary>Waits until every batch sent is stored; throws the first failure.</summary>
    public Task AllStoredAsync() => Task.WhenAll(inFlight);

    private void ThrowIfFailed()
    {
        if (inFlight.FirstOrDefault(t => t.IsFaulted || t.IsCanceled) is { } failed)
        {
            failed.GetAwaiter().GetResult();
        }
    }
}
