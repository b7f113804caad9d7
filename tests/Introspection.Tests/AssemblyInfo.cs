using SEmigrate.TestSupport;

[assembly: AssemblyFixture(typeof(RealGuestFixture))]
