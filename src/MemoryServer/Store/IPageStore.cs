using SEmigrate.Contracts.Paging;

namespace SEmigrate.MemoryServer.Store;

/// <summary>Opaque pages per VM, up to a capacity. A record is kept exactly as it arrived (wire
/// form: header and body) and returned exactly so; storing a page again replaces it (idempotent).</summary>
public interface IPageStore : IDisposable
{
    long CapacityPages { get; }

    long UsedPages { get; }

    /// <summary>Stores every record of a batch, or none of them (StoreFullException) when they would
    /// not fit.</summary>
    void Put(Guid vm, IReadOnlyList<PageRecord> records);

    /// <summary>Prepares room for a VM's expected pages before its transfer starts (memory allocated
    /// and touched ahead of the transfer rather than page by page in it, without delaying the
    /// answer). It counts against capacity: a VM holds the larger of its reservation and its stored
    /// pages (StoreFullException when that does not fit beside what the others hold).</summary>
    void Reserve(Guid vm, long pages);

    /// <summary>The stored wire form of a page, or null.</summary>
    byte[]? Get(Guid vm, ulong pfn);

    /// <summary>Drops a VM's pages; returns how many there were.</summary>
    long Release(Guid vm);

    IReadOnlyDictionary<Guid, long> PagesPerVm();

    /// <summary>Records a VM's owner: the SHA-256 of its capability (see PageServer), kept with its pages so
    /// that a server that restarts on them still knows who may release them. Release forgets it.</summary>
    void SetOwner(Guid vm, byte[] capabilityHash);

    /// <summary>The VM's owner as <see cref="SetOwner"/> recorded it; null for a VM that has none.</summary>
    byte[]? OwnerOf(Guid vm);

    /// <summary>Records that the holder of this capability released its VM: the migration it was issued for
    /// is over here, and starting a VM with it again is a replay. Kept as long as the store (32 bytes a VM).</summary>
    void EndOwner(byte[] capabilityHash);

    bool HasEnded(byte[] capabilityHash);
}

public sealed class StoreFullException(long capacity, long used, long wanted)
    : Exception($"store full: {used} of {capacity} pages stored or reserved, {wanted} more needed");
