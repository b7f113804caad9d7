using Microsoft.Win32.SafeHandles;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Paging;

namespace SEmigrate.MemoryServer.Store;

/// <summary>Records in files, for stores larger than memory: one file per VM
/// (FOLDER/VM.pages) of fixed 4148-byte slots, each a record's wire form padded to the largest body.
/// The index (page number to slot) is rebuilt from the slots on open, so a restart loses nothing;
/// a page stored again is rewritten in its slot.</summary>
public sealed class FilePageStore : IPageStore
{
    public const int SlotSize = PageRecord.HeaderSize + PageRecord.SealedBodySize;

    private sealed class VmFile(SafeFileHandle handle)
    {
        public SafeFileHandle Handle { get; } = handle;

        public Dictionary<ulong, long> Slots { get; } = [];
    }

    private readonly string folder;
    private readonly Dictionary<Guid, VmFile> vms = [];
    private readonly Room room;
    private readonly Lock gate = new();
    private long used;

    public FilePageStore(string folder, long capacityPages)
    {
        this.folder = folder;
        CapacityPages = capacityPages;
        room = new Room(capacityPages);
        Directory.CreateDirectory(folder);
        foreach (var path in Directory.GetFiles(folder, "*.pages"))
        {
            if (Guid.TryParseExact(Path.GetFileNameWithoutExtension(path), "N", out var vm))
            {
                var file = Open(vm);
                Reindex(file);
                used += file.Slots.Count;
                room.Adopt(vm, file.Slots.Count);
            }
        }
    }

    public long CapacityPages { get; }

    public long UsedPages => Interlocked.Read(ref used);

    public string PathOf(Guid vm) => Path.Combine(folder, $"{vm:N}.pages");

    private VmFile Open(Guid vm)
    {
        if (!vms.TryGetValue(vm, out var file))
        {
            var created = !File.Exists(PathOf(vm));
            vms[vm] = file = new VmFile(File.OpenHandle(PathOf(vm), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.Read));
            if (created)
            {
                Durable.SyncDirectory(folder); // a crash must not lose the file of pages acknowledged later
            }
        }
        return file;
    }

    private static void Reindex(VmFile file)
    {
        var length = RandomAccess.GetLength(file.Handle);
        var header = new byte[PageRecord.HeaderSize];
        for (long slot = 0; slot * SlotSize + SlotSize <= length; slot++)
        {
            RandomAccess.Read(file.Handle, header, slot * SlotSize);
            if (header[0] is (byte)PageClass.Zero or (byte)PageClass.Plain or (byte)PageClass.Sealed)
            {
                file.Slots[BitConverter.ToUInt64(header, 8)] = slot;
            }
        }
    }

    public void Put(Guid vm, IReadOnlyList<PageRecord> records)
    {
        lock (gate)
        {
            var file = Open(vm);
            var added = records.Select(r => r.Pfn).Distinct().Count(pfn => !file.Slots.ContainsKey(pfn));
            room.Store(vm, added);
            var slot = new byte[SlotSize];
            foreach (var r in records)
            {
                Array.Clear(slot);
                PageFrame.WritePage(slot, r);
                if (!file.Slots.TryGetValue(r.Pfn, out var index))
                {
                    index = file.Slots.Count;
                    file.Slots[r.Pfn] = index;
                }
                RandomAccess.Write(file.Handle, slot, index * SlotSize);
            }
            // On disk before this returns, so before the store is acknowledged: an acknowledged page
            // survives a crash of the machine, not only of the server.
            RandomAccess.FlushToDisk(file.Handle);
            used += added;
        }
    }

    public void Reserve(Guid vm, long pages)
    {
        lock (gate)
        {
            room.Reserve(vm, pages); // counted; the file grows as pages arrive
        }
    }

    public byte[]? Get(Guid vm, ulong pfn)
    {
        lock (gate)
        {
            if (!vms.TryGetValue(vm, out var file) || !file.Slots.TryGetValue(pfn, out var index))
            {
                return null;
            }
            var slot = new byte[SlotSize];
            RandomAccess.Read(file.Handle, slot, index * SlotSize);
            var c = (PageClass)slot[0];
            var size = c is PageClass.Zero or PageClass.Plain or PageClass.Sealed ? PageRecord.HeaderSize + PageRecord.BodySize(c) : SlotSize;
            return slot[..size];
        }
    }

    public long Release(Guid vm)
    {
        lock (gate)
        {
            File.Delete(OwnerPath(vm));
            room.Release(vm);
            if (!vms.Remove(vm, out var file))
            {
                return 0;
            }
            file.Handle.Dispose();
            File.Delete(PathOf(vm));
            used -= file.Slots.Count;
            return file.Slots.Count;
        }
    }

    private string OwnerPath(Guid vm) => Path.Combine(folder, $"{vm:N}.owner");

    public void SetOwner(Guid vm, byte[] capabilityHash) => Durable.ReplaceFile(OwnerPath(vm), Convert.ToHexString(capabilityHash));

    private string EndedPath(byte[] capabilityHash) => Path.Combine(folder, "ended", Convert.ToHexString(capabilityHash));

    public void EndOwner(byte[] capabilityHash)
    {
        Directory.CreateDirectory(Path.Combine(folder, "ended"));
        Durable.ReplaceFile(EndedPath(capabilityHash), "");
    }

    public bool HasEnded(byte[] capabilityHash) => File.Exists(EndedPath(capabilityHash));

    public byte[]? OwnerOf(Guid vm) => File.Exists(OwnerPath(vm)) ? Convert.FromHexString(File.ReadAllText(OwnerPath(vm)).Trim()) : null;

    public IReadOnlyDictionary<Guid, long> PagesPerVm()
    {
        lock (gate)
        {
            return vms.ToDictionary(kv => kv.Key, kv => (long)kv.Value.Slots.Count);
        }
    }

    public void Dispose()
    {
        lock (gate)
        {
            foreach (var file in vms.Values)
            {
                file.Handle.Dispose();
            }
            vms.Clear();
        }
    }
}
