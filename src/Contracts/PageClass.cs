namespace SEmigrate.Contracts;

/// <summary>What travels for a guest page. The numeric values are wire format (page headers,
/// classification maps): never renumber.</summary>
public enum PageClass : byte
{
    /// <summary>Free in the guest: its bytes never leave the source. A migration sends no record for it
    /// (the manifest names it); a zero record is a body-less marker.</summary>
    Zero = 0,

    /// <summary>Owned only by processes whose data is already encrypted: travels as-is, with a GMAC
    /// tag so that nobody on the way can change it unnoticed.</summary>
    Plain = 1,

    /// <summary>May hold secrets: sealed with AES-GCM at the source.</summary>
    Sealed = 2,
}
