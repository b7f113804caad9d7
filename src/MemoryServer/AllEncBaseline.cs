using SEmigrate.Contracts.Paging;
using SEmigrate.Sealing;

namespace SEmigrate.MemoryServer;

/// <summary>The original paper's design, kept as a baseline to measure against: the sub-host holds the
/// channel key (sent to it wrapped for its own key pair), decrypts every page it receives and
/// re-encrypts it at rest with a key of its own; page-in reverses both. Only VMs started in allenc
/// mode ever reach this code.</summary>
internal sealed class AllEncBaseline(Guid vm, DataKey channelKey, uint replyEpoch) : IDisposable
{
    private readonly DataKey atRestKey = DataKey.Generate();
    private readonly PageOpener channelOpener = new(channelKey, vm);
    private readonly PageSealer channelSealer = channelKey.CreateSealer(vm, replyEpoch);
    private PageSealer? atRestSealer;
    private PageOpener? atRestOpener;
    private readonly byte[] page = new byte[PageRecord.PageSize];

    public List<PageRecord> ToRest(IReadOnlyList<PageRecord> received)
    {
        atRestSealer ??= atRestKey.CreateSealer(vm, 1);
        var stored = new List<PageRecord>(received.Count);
        lock (page)
        {
            foreach (var r in received)
            {
                if (!channelOpener.TryOpen(r, page))
                {
                    throw new InvalidDataException($"page 0x{r.Pfn:x} does not open with the channel key");
                }
                stored.Add(atRestSealer.Seal(r.Pfn, r.Version, page));
            }
        }
        return stored;
    }

    public PageRecord FromRest(PageRecord stored)
    {
        atRestOpener ??= new PageOpener(atRestKey, vm);
        lock (page)
        {
            if (!atRestOpener.TryOpen(stored, page))
            {
                throw new InvalidDataException($"page 0x{stored.Pfn:x} does not open with the at-rest key");
            }
            return channelSealer.Seal(stored.Pfn, stored.Version, page);
        }
    }

    public void Dispose()
    {
        channelOpener.Dispose();
        channelSealer.Dispose();
        atRestSealer?.Dispose();
        atRestOpener?.Dispose();
        atRestKey.Dispose();
        channelKey.Dispose();
    }
}
