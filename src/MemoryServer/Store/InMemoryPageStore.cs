using SEmigrate.Contracts.Paging;

namespace SEmigrate.MemoryServer.Store;

/// <summary>The default store: records in memory.</summary>
public sealed class InMemoryPageStore(long capacityPages) : IPageStore
{
    private readonly Dictionary<Guid, Dictionary<ulong, byte[]>> vms = [];
    private readonly Lock gate = new();
    private long used;

    public long CapacityPages => capacityPages;

    public long UsedPages => Interlocked.Read(ref used);

    public void Put(Guid vm, IReadOnlyList<PageRecord> records)
    {
        lock (gate)
        {
            if (!vms.TryGetValue(vm, out var pages))
            {
                vms[vm] = pages = [];
            }
            var added = records.Select(r => r.Pfn).Distinct().Count(pfn => !pages.ContainsKey(pfn));
            if (used + added > capacityPages)
            {
                throw new StoreFullException(capacityPages, used, added);
            }
            foreach (var r in records)
            {
                pages[r.Pfn] = StoredRecord.Encode(r);
            }
            used += added;
        }
    }

    public byte[]? Get(Guid vm, ulong pfn)
    {
        lock (gate)
        {
            return vms.TryGetValue(vm, out var pages) && pages.TryGetValue(pfn, out var bytes) ? bytes : null;
        }
    }

    public long Release(Guid vm)
    {
        lock (gate)
        {
            if (!vms.Remove(vm, out var pages))
            {
                return 0;
            }
            used -= pages.Count;
            return pages.Count;
        }
    }

    public IReadOnlyDictionary<Guid, long> PagesPerVm()
    {
        lock (gate)
        {
            return vms.ToDictionary(kv => kv.Key, kv => (long)kv.Value.Count);
        }
    }

    /// <summary>Every stored byte, for tests that play the untrusted administrator.</summary>
    public IEnumerable<byte[]> AllRecords()
    {
        lock (gate)
        {
            return [.. vms.Values.SelectMany(v => v.Values)];
        }
    }

    public void Dispose()
    {
    }
}
