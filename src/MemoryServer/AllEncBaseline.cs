using SEmigrate.Contracts.Paging;
using SEmigrate.Sealing;

namespace SEmigrate.MemoryServer;

/// <summary>The original paper's design, kept as a baseline to measure against: the sub-host holds the
/// channel key (sent to it wrapped for its own key pair), decrypts every page it receives and
/// re-encrypts it at rest with a key of its own; page-in reverses both. Only VMs started in allenc
/// mode ever reach this code. The at-rest key lives as long as the VM's pages; the channel key is the first
/// one sent (a retried transfer sends the same again).</summary>
internal sealed class AllEncBaseline(Guid vm) : IDisposable
{
    private readonly DataKey atRestKey = DataKey.Generate();
    private readonly byte[] page = new byte[PageRecord.PageSize];
    private PageSealer? atRestSealer;
    private PageOpener? atRestOpener;
    private (DataKey Key, PageOpener Opener, PageSealer Sealer)? channel;

    /// <summary>Takes the VM's channel key (this object keeps <paramref name="key"/> or disposes it); replies are
    /// sealed under <paramref name="replyEpoch"/>. The first key stays: a retried transfer sends the same key
    /// again, and a different one (somebody else's) is refused (false) rather than replacing it.</summary>
    public bool SetChannelKey(DataKey key, uint replyEpoch)
    {
        lock (page)
        {
            if (channel is { } held)
            {
                var same = held.Key.Matches(key);
                key.Dispose();
                return same;
            }
            channel = (key, new PageOpener(key, vm), key.CreateSealer(vm, replyEpoch));
            return true;
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
