using System.Threading.Channels;
using SEmigrate.Contracts.Paging;

namespace SEmigrate.MemoryServer.Client;

/// <summary>The sender's side of a bulk store: at most <c>window</c> batches in flight, and <c>spare</c>
/// more buffers so that the next batches are encoded (sealed) while the window is full. A buffer is
/// reused once the host has stored its batch. The first failed store stops the sender at its next
/// batch, instead of after it has encoded everything else; stores still in flight then finish on
/// their own (nothing here is disposed under them).</summary>
public sealed class BatchWindow
{
    /// <summary>The source's transfer (and the bench's default): 8 batches of 1 MiB in flight, 2 sealed ahead.</summary>
    public const int DefaultWindow = 8;
    public const int DefaultSpare = 2;
    public const int DefaultBatchBytes = 1 << 20;

    private readonly Channel<PageBatch> free;
    private readonly SemaphoreSlim window;
    private readonly List<Task> inFlight = [];
    private readonly int size;

    public BatchWindow(int window, int spare, int batchBytes)
    {
        size = window;
        this.window = new SemaphoreSlim(window, window);
        free = Channel.CreateBounded<PageBatch>(window + spare);
        for (var i = 0; i < window + spare; i++)
        {
            free.Writer.TryWrite(new PageBatch(batchBytes));
        }
    }

    /// <summary>An empty buffer to fill; waits while every buffer is in flight or waiting to go, and
    /// throws the first failed store's exception.</summary>
    public async ValueTask<PageBatch> NextAsync(CancellationToken ct)
    {
        ThrowIfFailed();
        var batch = await free.Reader.ReadAsync(ct);
        ThrowIfFailed();
        batch.Clear();
        return batch;
    }

    /// <summary>Stores a filled batch once the window has room: <paramref name="store"/> returns when the
    /// host has it; the buffer is free again after that, whatever the outcome.</summary>
    public void Send(PageBatch batch, Func<PageBatch, Task> store, CancellationToken ct)
    {
        if (inFlight.Count > 4 * size)
        {
            inFlight.RemoveAll(t => t.IsCompletedSuccessfully); // a long transfer keeps only what is pending
        }
        inFlight.Add(SendAsync(batch, store, ct));
    }

    private async Task SendAsync(PageBatch batch, Func<PageBatch, Task> store, CancellationToken ct)
    {
        try
        {
            await window.WaitAsync(ct);
            try
            {
                await store(batch);
            }
            finally
            {
                window.Release();
            }
        }
        finally
        {
            free.Writer.TryWrite(batch);
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
