using SEmigrate.Contracts.Paging;
using SEmigrate.MemoryServer.Store;

namespace SEmigrate.MemoryServer.Tests;

/// <summary>An untrusted sub-host: stores honestly, keeps every version it ever saw, and answers
/// page-in with whatever <see cref="Tamper"/> makes of the stored record.</summary>
internal sealed class TamperingStore(IPageStore inner) : IPageStore
{
    private readonly Dictionary<(Guid, ulong), List<byte[]>> history = [];

    public Func<Guid, ulong, byte[], TamperingStore, byte[]>? Tamper { get; set; }

    public long CapacityPages => inner.CapacityPages;

    public long UsedPages => inner.UsedPages;

    public IReadOnlyList<byte[]> History(Guid vm, ulong pfn) => history[(vm, pfn)];

    public byte[]? Honest(Guid vm, ulong pfn) => inner.Get(vm, pfn);

    public void Put(Guid vm, IReadOnlyList<PageRecord> records)
    {
        inner.Put(vm, records);
        lock (history)
        {
            foreach (var r in records)
            {
                var bytes = new byte[r.WireSize];
                PageFrame.WritePage(bytes, r);
                (history.TryGetValue((vm, r.Pfn), out var list) ? list : history[(vm, r.Pfn)] = []).Add(bytes);
            }
        }
    }

    public void Reserve(Guid vm, long pages) => inner.Reserve(vm, pages);

    public byte[]? Get(Guid vm, ulong pfn)
    {
        var stored = inner.Get(vm, pfn);
        return stored is null || Tamper is null ? stored : Tamper(vm, pfn, stored.ToArray(), this);
    }

    public long Release(Guid vm) => inner.Release(vm);

    public IReadOnlyDictionary<Guid, long> PagesPerVm() => inner.PagesPerVm();

    public void SetOwner(Guid vm, byte[] capabilityHash) => inner.SetOwner(vm, capabilityHash);

    public byte[]? OwnerOf(Guid vm) => inner.OwnerOf(vm);

    public void EndOwner(byte[] capabilityHash) => inner.EndOwner(capabilityHash);

    public bool HasEnded(byte[] capabilityHash) => inner.HasEnded(capabilityHash);

    public void Dispose() => inner.Dispose();
}
