using SEmigrate.Contracts;

namespace SEmigrate.Sealing;

/// <summary>The main host's own record of every page it has placed elsewhere: the class it must
/// come back as and its current version (anti-rollback: an older version is refused). Page numbers
/// beyond the table are not guest pages.</summary>
public sealed class PageTable(ulong pages)
{
    private readonly byte[] classes = new byte[pages];
    private readonly ulong[] versions = new ulong[pages];

    public ulong Pages => pages;

    public void Set(ulong pfn, PageClass c, ulong version)
    {
        Check(pfn);
        classes[pfn] = (byte)c;
        Volatile.Write(ref versions[pfn], version);
    }

    public (PageClass Class, ulong Version) this[ulong pfn]
    {
        get
        {
            Check(pfn);
            return ((PageClass)classes[pfn], Volatile.Read(ref versions[pfn]));
        }
    }

    private void Check(ulong pfn)
    {
        if (pfn >= pages)
        {
            throw new ArgumentOutOfRangeException(nameof(pfn), $"page 0x{pfn:x} is beyond the VM's {pages} pages");
        }
    }
}
