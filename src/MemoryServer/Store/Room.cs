namespace SEmigrate.MemoryServer.Store;

/// <summary>A store's room, promised and used: a VM holds the larger of the pages reserved for it (when
/// paging starts) and the pages it stores, and what all VMs hold stays within capacity. So a reservation
/// is refused when it does not fit (a VM that will not fit fails before anything moves) and a flood of
/// reservations cannot promise, or allocate, more than the store has. Not thread-safe: the store calls
/// it under its own lock.</summary>
internal sealed class Room(long capacity)
{
    private readonly Dictionary<Guid, (long Reserved, long Stored)> held = [];
    private long committed;

    /// <summary>Reserves <paramref name="pages"/> for <paramref name="vm"/> (replacing its reservation).</summary>
    public void Reserve(Guid vm, long pages)
    {
        var (reserved, stored) = held.GetValueOrDefault(vm);
        Commit(vm, reserved, stored, Math.Max(0, pages), stored);
    }

    /// <summary>Counts <paramref name="added"/> more stored pages of <paramref name="vm"/>.</summary>
    public void Store(Guid vm, long added)
    {
        var (reserved, stored) = held.GetValueOrDefault(vm);
        Commit(vm, reserved, stored, reserved, stored + added);
    }

    /// <summary>Counts what <paramref name="vm"/> held before (a store reopened after a restart), unchecked:
    /// it is there already.</summary>
    public void Adopt(Guid vm, long stored)
    {
        held[vm] = (0, stored);
        committed += stored;
    }

    public void Release(Guid vm)
    {
        if (held.Remove(vm, out var was))
        {
            committed -= Math.Max(was.Reserved, was.Stored);
        }
    }

    private void Commit(Guid vm, long reserved, long stored, long newReserved, long newStored)
    {
        var after = committed - Math.Max(reserved, stored) + Math.Max(newReserved, newStored);
        if (after > capacity)
        {
            throw new StoreFullException(capacity, committed, Math.Max(newReserved, newStored) - Math.Max(reserved, stored));
        }
        held[vm] = (newReserved, newStored);
        committed = after;
    }
}
