using SEmigrate.Contracts.Paging;
using SEmigrate.Sealing;

namespace SEmigrate.MemoryServer;

/// <summary>The original paper's design, kept as a baseline to measure against: the sub-host holds the
/// channel key (sent to it wrapped for its own key pair), decrypts every page it receives and
/// re-encrypts it at rest with a key of its own; page-in reverses both. Only VMs started in allenc
/// mode ever reach this code. The at-rest key lives as long as the VM's pages: a channel key sent again
/// (a retried transfer) replaces only the channel, so pages stored before still open.</summary>
internal sealed class AllEncBaseline(Guid vm) : IDisposable
{
    private readonly DataKey atRestKey = DataKey.Generate();
    private readonly byte[] page = new byte[PageRecord.PageSize];
    private PageSealer? atRestSealer;
    private PageOpener? atRestOpener;
    private (DataKey Key, PageOpener Opener, PageSealer Sealer)? channel;

    /// <summary>Takes (or replaces) the channel key; replies are sealed under <paramref name="replyEpoch"/>.</summary>
    public void SetChannelKey(DataKey key, uint replyEpoch)
    {
        lock (page)
        {
            DisposeChannel();
            channel = (key, new PageOpener(key, vm), key.CreateSealer(vm, replyEpoch));
        }
    }

    public List<PageRecord> ToRest(IReadOnlyList<PageRecord> received)
    {
        lock (page)
        {
            var (_, channelOpener, _) = Channel();
            atRestSealer ??= atRestKey.CreateSealer(vm, 1);
            var stored = new List<PageRecord>(received.Count);
            foreach (var r in received)
            {
                if (!channelOpener.TryOpen(r, page))
                {
                    throw new InvalidDataException($"page 0x{r.Pfn:x} does not open with the channel key");
                }
                stored.Add(atRestSealer.Seal(r.Pfn, r.Version, page));
            }
            return stored;
        }
    }

    public PageRecord FromRest(PageRecord stored)
    {
        lock (page)
        {
            var (_, _, channelSealer) = Channel();
            atRestOpener ??= new PageOpener(atRestKey, vm);
            if (!atRestOpener.TryOpen(stored, page))
            {
                throw new InvalidDataException($"page 0x{stored.Pfn:x} does not open with the at-rest key");
            }
            return channelSealer.Seal(stored.Pfn, stored.Version, page);
        }
    }

    private (DataKey Key, PageOpener Opener, PageSealer Sealer) Channel() =>
        channel ?? throw new InvalidOperationException("allenc VM without a channel key");

    private void DisposeChannel()
    {
        if (channel is var (key, opener, sealer))
        {
            opener.Dispose();
            sealer.Dispose();
            key.Dispose();
        }
        channel = null;
    }

    public void Dispose()
    {
        lock (page)
        {
            DisposeChannel();
            atRestSealer?.Dispose();
            atRestOpener?.Dispose();
            atRestKey.Dispose();
        }
    }
}
